# No plan deletes or replaces a KMS key in prod.
#
# Deleting a key makes everything encrypted with it unreadable once the waiting
# period ends, and a replacement deletes the old key too. A delete has no
# planned values, so the message takes the key's id from its `before` values.
package aws.kms.deletion

import rego.v1

import data.lib.terraform

deny contains finding if {
	input.orchestrator.environment == "prod"
	some key in terraform.resource_changes("aws_kms_key")
	terraform.is_deleted(key)

	finding := {
		"msg": sprintf(
			"%s would be %s in prod: keep the key in the configuration and protect it with lifecycle { prevent_destroy = true }",
			[key_label(key), change_verb(key)],
		),
		"resource": key.address,
	}
}

# The address and, when the prior state records it, the key id.
key_label(key) := sprintf("%s (key %s)", [key.address, key_id]) if {
	key_id := key.change.before.key_id
	is_string(key_id)
} else := key.address

change_verb(key) := "replaced" if terraform.is_created_or_updated(key)

change_verb(key) := "deleted" if not terraform.is_created_or_updated(key)
