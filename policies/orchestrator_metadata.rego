# The input carries the shard's metadata under `orchestrator`.
#
# Rules for one environment (such as the prod-only rules of this folder) would
# pass silently without it, so a missing environment fails the shard.
package orchestrator.metadata

import rego.v1

deny contains finding if {
	environment := object.get(input, ["orchestrator", "environment"], null)
	not is_non_empty_string(environment)

	finding := {"msg": "the policy input has no orchestrator.environment: evaluate plans with build_policy_input so that environment-specific rules apply"}
}

is_non_empty_string(value) if {
	is_string(value)
	value != ""
}
