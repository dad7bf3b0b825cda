output "role_arns" {
  description = "ARN of each role, by role name."
  value       = { for name, role in aws_iam_role.this : name => role.arn }
}

output "role_ids" {
  description = "Unique ID (AROA...) of each role, by role name. Policies that must not match a re-created role of the same name use it."
  value       = { for name, role in aws_iam_role.this : name => role.unique_id }
}
