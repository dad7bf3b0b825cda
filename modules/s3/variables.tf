# Common variables: the orchestrator passes these to every service.

variable "account_id" {
  description = "AWS account ID that the shard deploys into (12 digits)."
  type        = string

  validation {
    condition     = can(regex("^[0-9]{12}$", var.account_id))
    error_message = "The account_id must be a 12-digit AWS account ID."
  }
}

variable "region" {
  description = "AWS region of the shard, for example eu-west-1."
  type        = string
}

variable "project" {
  description = "Project name of the deployment file; it prefixes resource names."
  type        = string
}

variable "environment" {
  description = "Environment of the account, for example prod or staging."
  type        = string
}

variable "tags" {
  description = "Tags added to every taggable resource of the shard."
  type        = map(string)
  default     = {}
}

variable "repo_root" {
  description = "Absolute path of the repository checkout. File paths in deployment files are relative to it."
  type        = string
}

variable "s3_buckets" {
  description = "S3 buckets, keyed by a short name. The bucket name is <project>-<name>-<account_id>-<region> in lower case."
  type = map(object({
    versioning          = optional(bool, true)
    kms_key_alias       = optional(string)
    lifecycle_days      = optional(number)
    readers             = optional(list(string), [])
    block_public_access = optional(bool, true)
    force_destroy       = optional(bool, false)
  }))
  default = {}

  validation {
    condition = alltrue([
      for bucket in values(var.s3_buckets) : bucket.lifecycle_days == null ? true : bucket.lifecycle_days >= 1
    ])
    error_message = "Each s3_buckets lifecycle_days must be at least 1 when set."
  }

  validation {
    condition = alltrue([
      for bucket in values(var.s3_buckets) : bucket.kms_key_alias == null ? true : startswith(bucket.kms_key_alias, "alias/")
    ])
    error_message = "Each s3_buckets kms_key_alias must be a KMS alias name that starts with \"alias/\"."
  }
}
