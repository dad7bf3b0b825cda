"""Validation: routing rules, state-key collisions and service schemas, at file and line."""

from __future__ import annotations

import json

from orchestrator.discovery import discover
from orchestrator.settings import load_settings
from orchestrator.validation import validate_inventory

from test_discovery import make_account, make_service, write


def messages_for(repo) -> list[str]:
    return [str(d) for d in validate_inventory(discover(load_settings(repo)))]


def base_repo(tmp_path):
    repo = tmp_path / "repo"
    make_service(repo, "s3", ["s3_buckets"])
    make_account(repo, "prod", "333333333333", regions=("eu-west-1",))
    return repo


def test_wrong_account_id_is_rejected(tmp_path):
    repo = base_repo(tmp_path)
    write(repo / "Accounts/prod/app.tfvars", 'project = "app"\naccount_id = "222222222222"\ns3_buckets = {}\n')

    messages = messages_for(repo)
    assert len(messages) == 1
    assert messages[0].startswith("Accounts/prod/app.tfvars:2:")
    assert "does not match Accounts/prod/account.json (333333333333)" in messages[0]


def test_disallowed_region_is_rejected(tmp_path):
    repo = base_repo(tmp_path)
    write(repo / "Accounts/prod/app.tfvars", 'region = "ap-south-1"\ns3_buckets = {}\n')

    messages = messages_for(repo)
    assert len(messages) == 1
    assert messages[0].startswith("Accounts/prod/app.tfvars:1:")
    assert "region ap-south-1 is not allowed for account prod (allowed: eu-west-1)" in messages[0]


def test_state_key_collision_names_both_files(tmp_path):
    repo = base_repo(tmp_path)
    write(repo / "Accounts/prod/one.tfvars", 'project = "shared"\ns3_buckets = {}\n')
    write(repo / "Accounts/prod/two.tfvars", 'project = "shared"\ns3_buckets = {}\n')

    messages = messages_for(repo)
    assert len(messages) == 1
    assert "Accounts/prod/two.tfvars:1:" in messages[0]
    assert "prod/one/s3" in messages[0]
    assert "Accounts/prod/one.tfvars" in messages[0]
    assert "s3/333333333333/eu-west-1/shared/terraform.tfstate" in messages[0]


def test_schema_typo_reported_at_its_line(tmp_path):
    repo = base_repo(tmp_path)
    schema = {
        "type": "object",
        "properties": {"s3_buckets": {"type": "object", "additionalProperties": {
            "type": "object", "additionalProperties": False,
            "properties": {"versioning": {"type": "boolean"}, "lifecycle_days": {"type": "integer"}},
        }}},
    }
    write(repo / "modules/s3/schema.json", json.dumps(schema))
    write(repo / "Accounts/prod/data.tfvars", 's3_buckets = {\n  raw = {\n    versionning = true\n  }\n}\n')

    messages = messages_for(repo)
    assert messages == ["Accounts/prod/data.tfvars:3:5: s3_buckets.raw.versionning: unknown property, did you mean versioning?"]


def test_all_errors_of_all_files_reported(tmp_path):
    repo = base_repo(tmp_path)
    write(repo / "Accounts/prod/a.tfvars", 'region = "ap-south-1"\ns3_buckets = {}\n')
    write(repo / "Accounts/prod/b.tfvars", 's3_bucket = {}\n')
    write(repo / "Accounts/prod/c.tfvars", 'project = "c\n')

    messages = messages_for(repo)
    assert [m.split(":")[0] for m in messages] == ["Accounts/prod/a.tfvars", "Accounts/prod/b.tfvars", "Accounts/prod/c.tfvars"]
