# Source of ../module-plan.json: a root module with resources in child modules, nested
# modules, for_each keys and count indexes, so that tests can check how Checkov names them.
# README.md in the parent folder says how to regenerate the plan.

terraform {
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.0"
    }
  }
}

# Fake credentials: planning only new resources without data sources needs no AWS call.
provider "aws" {
  region                      = "eu-west-1"
  access_key                  = "test"
  secret_key                  = "test"
  skip_credentials_validation = true
  skip_requesting_account_id  = true
  skip_metadata_api_check     = true
}

module "storage" {
  source = "./modules/storage"

  names = ["exports", "ledger"]
}

module "counted" {
  source = "./modules/bucket"
  count  = 1

  name = "counted-0"
}

resource "aws_s3_bucket" "root" {
  bucket = "root-level-bucket-example"
}
