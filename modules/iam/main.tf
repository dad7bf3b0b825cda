locals {
  common_tags = merge(
    {
      Project     = var.project
      Environment = var.environment
    },
    var.tags,
  )

  # A role with neither trusted_services nor assume_role_policy_file trusts its own account, so
  # IAM principals of the account can assume it when their own policies allow sts:AssumeRole.
  assume_role_policies = {
    for name, role in var.iam_roles : name => (
      role.assume_role_policy_file != null ? file("${var.repo_root}/${role.assume_role_policy_file}") : jsonencode({
        Version = "2012-10-17"
        Statement = [
          {
            Effect = "Allow"
            Action = "sts:AssumeRole"
            Principal = (
              length(role.trusted_services) > 0
              ? tomap({ Service = role.trusted_services })
              : tomap({ AWS = ["arn:aws:iam::${var.account_id}:root"] })
            )
          },
        ]
      })
    )
  }

  managed_policy_attachments = merge([
    for name, role in var.iam_roles : {
      for arn in role.managed_policies : "${name}/${arn}" => {
        role       = name
        policy_arn = arn
      }
    }
  ]...)

  # Each policy file becomes an inline policy named after the file without .json, and inline_policy is named "inline".
  inline_policies = merge(
    merge([
      for name, role in var.iam_roles : {
        for path in role.policy_files : "${name}/${trimsuffix(basename(path), ".json")}" => {
          role        = name
          policy_name = trimsuffix(basename(path), ".json")
          document    = file("${var.repo_root}/${path}")
        }
      }
    ]...),
    {
      for name, role in var.iam_roles : "${name}/inline" => {
        role        = name
        policy_name = "inline"
        document    = role.inline_policy
      } if role.inline_policy != null
    },
  )
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

resource "aws_iam_role" "this" {
  for_each = var.iam_roles

  name               = each.key
  description        = each.value.description
  assume_role_policy = local.assume_role_policies[each.key]
  tags               = local.common_tags
}

resource "aws_iam_role_policy_attachment" "this" {
  for_each = local.managed_policy_attachments

  role       = aws_iam_role.this[each.value.role].name
  policy_arn = each.value.policy_arn
}

resource "aws_iam_role_policy" "this" {
  for_each = local.inline_policies

  name   = each.value.policy_name
  role   = aws_iam_role.this[each.value.role].name
  policy = each.value.document
}
