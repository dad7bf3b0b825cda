"""Terraform deployment orchestrator: sharded, parallel plan and apply across AWS accounts."""
