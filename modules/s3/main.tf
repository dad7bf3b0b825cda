locals {
  common_tags = merge(
    {
      Project     = var.project
      Environment = var.environment
    },
    var.tags,
  )

  bucket_names = {
    for name, bucket in var.s3_buckets : name => lower("${var.project}-${name}-${var.account_id}-${var.region}")
  }

  kms_key_aliases = toset(compact([for bucket in values(var.s3_buckets) : bucket.kms_key_alias]))

  lifecycle_buckets = { for name, bucket in var.s3_buckets : name => bucket if bucket.lifecycle_days != null }
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

# Keys come from the kms service, whose shards run earlier and keep their own state.
data "aws_kms_alias" "bucket_key" {
  for_each = local.kms_key_aliases

  name = each.value
}

resource "aws_s3_bucket" "this" {
  for_each = var.s3_buckets

  bucket        = local.bucket_names[each.key]
  force_destroy = each.value.force_destroy

  tags = merge(
    local.common_tags,
    length(each.value.readers) == 0 ? {} : { Readers = join(" ", each.value.readers) },
  )

  lifecycle {
    precondition {
      condition     = can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", local.bucket_names[each.key]))
      error_message = "The bucket name \"${local.bucket_names[each.key]}\" is invalid: S3 bucket names have 3 to 63 characters, all lower-case ASCII letters, digits, dots or hyphens. Change the project or the bucket key."
    }
  }
}

resource "aws_s3_bucket_versioning" "this" {
  for_each = var.s3_buckets

  bucket = aws_s3_bucket.this[each.key].id

  versioning_configuration {
    status = each.value.versioning ? "Enabled" : "Suspended"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "this" {
  for_each = var.s3_buckets

  bucket = aws_s3_bucket.this[each.key].id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = each.value.kms_key_alias == null ? "AES256" : "aws:kms"
      kms_master_key_id = each.value.kms_key_alias == null ? null : data.aws_kms_alias.bucket_key[each.value.kms_key_alias].target_key_arn
    }

    # S3 Bucket Keys reduce the number of KMS requests and apply only to SSE-KMS.
    bucket_key_enabled = each.value.kms_key_alias != null
  }
}

resource "aws_s3_bucket_public_access_block" "this" {
  for_each = var.s3_buckets

  bucket = aws_s3_bucket.this[each.key].id

  block_public_acls       = each.value.block_public_access
  block_public_policy     = each.value.block_public_access
  ignore_public_acls      = each.value.block_public_access
  restrict_public_buckets = each.value.block_public_access
}

resource "aws_s3_bucket_lifecycle_configuration" "this" {
  for_each = local.lifecycle_buckets

  bucket = aws_s3_bucket.this[each.key].id

  rule {
    id     = "expire-after-${each.value.lifecycle_days}-days"
    status = "Enabled"

    filter {}

    expiration {
      days = each.value.lifecycle_days
    }

    noncurrent_version_expiration {
      noncurrent_days = each.value.lifecycle_days
    }

    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }

  # Set the versioning status before the rule that expires noncurrent versions.
  depends_on = [aws_s3_bucket_versioning.this]
}
