locals {
  common_tags = merge(
    {
      Project     = var.project
      Environment = var.environment
    },
    var.tags,
  )

  # A function without role_name uses the IAM role named like its key.
  role_names = { for name, function in var.lambda_functions : name => coalesce(function.role_name, name) }

  package_paths = { for name in keys(var.lambda_functions) : name => "${path.module}/packages/${name}.zip" }
}

# Stops a plan before any change when the credentials belong to another account.
data "aws_caller_identity" "current" {
  lifecycle {
    postcondition {
      condition     = self.account_id == var.account_id
      error_message = "The AWS credentials belong to account ${self.account_id}, but this shard deploys to account ${var.account_id}."
    }
  }
}

# Roles come from the iam service, whose shards run earlier and keep their own state.
data "aws_iam_role" "execution" {
  for_each = toset(values(local.role_names))

  name = each.value
}

resource "aws_lambda_function" "this" {
  for_each = var.lambda_functions

  function_name    = "${var.project}-${each.key}"
  description      = each.value.description
  role             = data.aws_iam_role.execution[local.role_names[each.key]].arn
  runtime          = each.value.runtime
  handler          = each.value.handler
  memory_size      = each.value.memory_size
  timeout          = each.value.timeout
  filename         = local.package_paths[each.key]
  source_code_hash = filebase64sha256(local.package_paths[each.key])
  tags             = local.common_tags

  dynamic "environment" {
    for_each = length(each.value.environment) > 0 ? [each.value.environment] : []

    content {
      variables = environment.value
    }
  }

  lifecycle {
    precondition {
      condition     = fileexists(local.package_paths[each.key])
      error_message = "The deployment package ${local.package_paths[each.key]} does not exist. Set source_dir for function \"${each.key}\" so that the orchestrator builds it before plan."
    }
  }
}
