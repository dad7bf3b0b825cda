# Every S3 bucket that exists after the apply has a public access block, and
# every public access block that the plan creates or changes sets all four settings.
package aws.s3.public_access

import rego.v1

import data.lib.terraform

public_access_settings := ["block_public_acls", "block_public_policy", "ignore_public_acls", "restrict_public_buckets"]

deny contains finding if {
	some bucket in terraform.resource_changes("aws_s3_bucket")
	terraform.exists_after_apply(bucket)
	not has_public_access_block(bucket)

	finding := {
		"msg": sprintf(
			"%s has no public access block: add an aws_s3_bucket_public_access_block whose bucket argument refers to this bucket, with all four settings true",
			[bucket.address],
		),
		"resource": bucket.address,
	}
}

# A setting that is unknown at plan time is not reported: it may well be true after the apply.
deny contains finding if {
	some block in terraform.resource_changes("aws_s3_bucket_public_access_block")
	terraform.is_created_or_updated(block)
	some setting in public_access_settings
	not terraform.is_unknown(block, setting)
	object.get(block.change.after, setting, null) != true

	finding := {
		"msg": sprintf("%s does not set %s to true: set it to true to block public access to the bucket", [block.address, setting]),
		"resource": block.address,
	}
}

has_public_access_block(bucket) if {
	some block in terraform.resource_changes("aws_s3_bucket_public_access_block")
	terraform.exists_after_apply(block)
	terraform.configures_bucket(block, bucket)
}
