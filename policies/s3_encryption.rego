# Every S3 bucket that exists after the apply has a server-side encryption configuration.
#
# Since AWS provider 4, encryption is its own resource,
# aws_s3_bucket_server_side_encryption_configuration, whose `bucket` argument
# names the bucket. A bucket still counts as encrypted when it sets the
# deprecated inline block `server_side_encryption_configuration`.
package aws.s3.encryption

import rego.v1

import data.lib.terraform

deny contains finding if {
	some bucket in terraform.resource_changes("aws_s3_bucket")
	terraform.exists_after_apply(bucket)
	not has_encryption(bucket)

	finding := {
		"msg": sprintf(
			"%s has no server-side encryption: add an aws_s3_bucket_server_side_encryption_configuration whose bucket argument refers to this bucket (SSE-KMS with a customer managed key for confidential data)",
			[bucket.address],
		),
		"resource": bucket.address,
	}
}

has_encryption(bucket) if {
	some configuration in terraform.resource_changes("aws_s3_bucket_server_side_encryption_configuration")
	terraform.exists_after_apply(configuration)
	terraform.configures_bucket(configuration, bucket)
}

has_encryption(bucket) if count(object.get(bucket.change.after, "server_side_encryption_configuration", [])) > 0
