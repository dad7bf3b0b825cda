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

variable "lambda_functions" {
  description = "Lambda functions, keyed by a short name. The function name is <project>-<name>."
  type = map(object({
    description = optional(string)
    runtime     = optional(string, "python3.12")
    handler     = optional(string, "handler.handler")
    # The orchestrator zips this folder to packages/<name>.zip before plan, and the module reads only the zip.
    source_dir  = optional(string)
    role_name   = optional(string)
    memory_size = optional(number, 128)
    timeout     = optional(number, 10)
    environment = optional(map(string), {})
  }))
  default = {}

  validation {
    condition = alltrue([
      for function in values(var.lambda_functions) : function.memory_size >= 128 && function.memory_size <= 10240
    ])
    error_message = "Each lambda_functions memory_size must be between 128 and 10240 (MB)."
  }

  validation {
    condition = alltrue([
      for function in values(var.lambda_functions) : function.timeout >= 1 && function.timeout <= 900
    ])
    error_message = "Each lambda_functions timeout must be between 1 and 900 (seconds)."
  }
}
