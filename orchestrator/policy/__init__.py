"""Policy checks of plans: OPA/Rego rules evaluated in-process and Checkov run as a tool."""
