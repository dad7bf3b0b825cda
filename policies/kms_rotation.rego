# Every KMS key that the plan creates or changes has automatic rotation of its key material.
#
# AWS rotates only symmetric encryption keys, so keys of another key spec
# (asymmetric or HMAC) are not checked.
package aws.kms.rotation

import rego.v1

import data.lib.terraform

deny contains finding if {
	some key in terraform.resource_changes("aws_kms_key")
	terraform.is_created_or_updated(key)
	is_symmetric(key)
	not terraform.is_unknown(key, "enable_key_rotation")
	object.get(key.change.after, "enable_key_rotation", null) != true

	finding := {
		"msg": sprintf("%s has key rotation disabled: set enable_key_rotation = true", [key.address]),
		"resource": key.address,
	}
}

# The provider's default spec is SYMMETRIC_DEFAULT, and an unknown spec is
# treated as symmetric so that the rotation setting is still checked.
is_symmetric(key) if terraform.is_unknown(key, "customer_master_key_spec")

is_symmetric(key) if object.get(key.change.after, "customer_master_key_spec", null) in {null, "SYMMETRIC_DEFAULT"}
