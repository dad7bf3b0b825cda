"""Generated Terraform configuration of a shard: the S3 backend and the AWS provider.

Both are written as ``*.tf.json`` files into the shard's working directory, so modules carry
no backend and no provider block of their own. Pure functions: no I/O here.
"""

from __future__ import annotations

from .settings import StateSettings

BACKEND_FILE_NAME = "orchestrator_backend.tf.json"
PROVIDER_FILE_NAME = "orchestrator_provider.tf.json"

# Services whose API the sandbox serves; each gets an endpoint override there.
SANDBOX_SERVICES = ("s3", "sts", "iam", "kms", "lambda", "dynamodb", "sqs", "sns", "logs", "cloudwatch", "ssm", "secretsmanager", "ec2")


def backend_config(state: StateSettings, key: str, shard_region: str, profile: str, sandbox_endpoint: str | None) -> dict:
    """Return the S3 backend arguments of one shard."""
    config: dict = {
        "bucket": state.bucket_for(shard_region),
        "key": key,
        "region": state.region_for(shard_region),
        "encrypt": True,
        "profile": profile,
    }
    if state.kms_key_id:
        config["kms_key_id"] = state.kms_key_id
    if state.lock == "dynamodb":
        config["dynamodb_table"] = state.dynamodb_table
    else:
        config["use_lockfile"] = True

    if sandbox_endpoint:
        config.update(
            {
                "endpoints": {"s3": sandbox_endpoint, "sts": sandbox_endpoint, "dynamodb": sandbox_endpoint},
                "use_path_style": True,
                "skip_credentials_validation": True,
                "skip_requesting_account_id": True,
                "skip_metadata_api_check": True,
            }
        )
    else:
        config["skip_metadata_api_check"] = True
    return config


def backend_document(config: dict) -> dict:
    return {"terraform": {"backend": {"s3": config}}}


def provider_config(region: str, account_id: str, profile: str, sandbox_endpoint: str | None) -> dict:
    """Return the AWS provider arguments of one shard.

    ``allowed_account_ids`` makes the provider refuse to run with credentials of any other
    account, so a routing mistake cannot create resources in the wrong account.
    """
    config: dict = {
        "region": region,
        "profile": profile,
        "allowed_account_ids": [account_id],
        "skip_metadata_api_check": True,
    }
    if sandbox_endpoint:
        config["s3_use_path_style"] = True
        config["skip_region_validation"] = True
        config["endpoints"] = [{service: sandbox_endpoint for service in SANDBOX_SERVICES}]
    return config


def provider_document(config: dict) -> dict:
    return {"provider": {"aws": [config]}}
