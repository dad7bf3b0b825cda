output "key_arns" {
  description = "ARN of each key, by key name."
  value       = { for name, key in aws_kms_key.this : name => key.arn }
}

output "key_ids" {
  description = "Key ID of each key, by key name."
  value       = { for name, key in aws_kms_key.this : name => key.key_id }
}

output "aliases" {
  description = "Alias name of each key (alias/...), by key name. Other services refer to keys by these aliases."
  value       = { for name, alias in aws_kms_alias.this : name => alias.name }
}
