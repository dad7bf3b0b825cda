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

variable "kms_keys" {
  description = "Customer managed KMS keys, keyed by a short name that is unique within the project."
  type = map(object({
    description          = optional(string)
    rotation             = optional(bool, true)
    deletion_window_days = optional(number, 30)
    alias                = optional(string)
    policy_file          = optional(string)
  }))
  default = {}

  validation {
    condition = alltrue([
      for key in values(var.kms_keys) : key.deletion_window_days >= 7 && key.deletion_window_days <= 30
    ])
    error_message = "Each kms_keys entry needs deletion_window_days between 7 and 30."
  }

  validation {
    condition = alltrue([
      for key in values(var.kms_keys) :
      key.alias == null ? true : startswith(key.alias, "alias/") && !startswith(key.alias, "alias/aws/")
    ])
    error_message = "Each kms_keys alias must start with \"alias/\" and must not start with \"alias/aws/\", which AWS reserves for its managed keys."
  }
}
