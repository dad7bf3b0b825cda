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

variable "iam_roles" {
  description = "IAM roles, keyed by role name. Policy file paths are relative to the repository root."
  type = map(object({
    description             = optional(string)
    trusted_services        = optional(list(string), [])
    assume_role_policy_file = optional(string)
    managed_policies        = optional(list(string), [])
    policy_files            = optional(list(string), [])
    inline_policy           = optional(string)
  }))
  default = {}

  validation {
    condition = alltrue([
      for role in values(var.iam_roles) : length(role.trusted_services) == 0 || role.assume_role_policy_file == null
    ])
    error_message = "Each iam_roles entry sets either trusted_services or assume_role_policy_file, not both."
  }

  validation {
    condition = alltrue(flatten([
      for role in values(var.iam_roles) : [
        for path in role.policy_files : endswith(path, ".json")
      ]
    ]))
    error_message = "Each iam_roles policy_files path must name a .json file."
  }

  validation {
    condition = alltrue([
      for role in values(var.iam_roles) :
      length(distinct(concat(
        [for path in role.policy_files : trimsuffix(basename(path), ".json")],
        role.inline_policy == null ? [] : ["inline"],
      ))) == length(role.policy_files) + (role.inline_policy == null ? 0 : 1)
    ])
    error_message = "The policy_files of one role must have distinct file names, and none may be inline.json when inline_policy is set: each file name without .json becomes the name of an inline policy, and inline_policy is named \"inline\"."
  }
}
