output "bucket_names" {
  description = "Name of each bucket, by bucket key."
  value       = { for name, bucket in aws_s3_bucket.this : name => bucket.id }
}

output "bucket_arns" {
  description = "ARN of each bucket, by bucket key."
  value       = { for name, bucket in aws_s3_bucket.this : name => bucket.arn }
}
