output "function_names" {
  description = "Name of each function, by function key."
  value       = { for name, function in aws_lambda_function.this : name => function.function_name }
}

output "function_arns" {
  description = "ARN of each function, by function key."
  value       = { for name, function in aws_lambda_function.this : name => function.arn }
}

output "invoke_arns" {
  description = "ARN that API Gateway uses to invoke each function, by function key."
  value       = { for name, function in aws_lambda_function.this : name => function.invoke_arn }
}
