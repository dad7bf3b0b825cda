locals {
  common_tags = merge(
    {
      Project     = var.project
      Environment = var.environment
    },
    var.tags,
  )

  alias_names = {
    for name, key in var.kms_keys : name => coalesce(key.alias, "alias/${var.project}-${name}")
  }
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

resource "aws_kms_key" "this" {
  for_each = var.kms_keys

  description             = coalesce(each.value.description, "${var.project} ${each.key}")
  enable_key_rotation     = each.value.rotation
  deletion_window_in_days = each.value.deletion_window_days
  policy                  = each.value.policy_file == null ? null : file("${var.repo_root}/${each.value.policy_file}")
  tags                    = local.common_tags
}

resource "aws_kms_alias" "this" {
  for_each = var.kms_keys

  name          = local.alias_names[each.key]
  target_key_id = aws_kms_key.this[each.key].key_id
}
