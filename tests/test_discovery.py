"""Discovery: accounts, service descriptors, deployment files and their shards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.discovery import MODULE_COMMON_VARIABLES, discover, module_variables, state_key
from orchestrator.errors import ConfigurationError
from orchestrator.settings import load_settings


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def make_service(repo: Path, name: str, keys: list[str], depends_on: list[str] = (), is_global: bool = False) -> None:
    descriptor = {"name": name, "keys": keys, "depends_on": list(depends_on), "global": is_global, "packages": []}
    write(repo / "modules" / name / "service.json", json.dumps(descriptor))
    variables = "\n".join(f'variable "{v}" {{}}' for v in [*MODULE_COMMON_VARIABLES, *keys])
    write(repo / "modules" / name / "variables.tf", variables + "\n")


def make_account(repo: Path, name: str, account_id: str, regions=("eu-west-1", "us-east-1")) -> None:
    account = {
        "name": name,
        "account_id": account_id,
        "environment": name,
        "regions": list(regions),
        "default_region": regions[0],
        "deploy_role_arn": f"arn:aws:iam::{account_id}:role/terraform-deployer",
    }
    write(repo / "Accounts" / name / "account.json", json.dumps(account))


@pytest.fixture
def small_repo(tmp_path) -> Path:
    repo = tmp_path / "repo"
    make_service(repo, "kms", ["kms_keys"])
    make_service(repo, "s3", ["s3_buckets"], depends_on=["kms"])
    make_account(repo, "prod", "333333333333")
    write(repo / "Accounts" / "prod" / "payments.tfvars", 'project = "payments"\nkms_keys = { data = {} }\ns3_buckets = { invoices = {} }\n')
    write(repo / "Accounts" / "prod" / "us" / "edge.tfvars", 'region = "us-east-1"\ns3_buckets = {}\n')
    return repo


def test_state_key_layout():
    assert state_key("s3", "333333333333", "eu-west-1", "payments") == "s3/333333333333/eu-west-1/payments/terraform.tfstate"


def test_discover_splits_files_into_shards(small_repo):
    inventory = discover(load_settings(small_repo))

    assert inventory.diagnostics == []
    assert [shard.id for shard in inventory.shards] == ["prod/payments/kms", "prod/payments/s3", "prod/us/edge/s3"]
    payments_s3 = inventory.shard("prod/payments/s3")
    assert payments_s3.state_key == "s3/333333333333/eu-west-1/payments/terraform.tfstate"
    assert payments_s3.values["s3_buckets"] == {"invoices": {}}
    assert "kms_keys" not in payments_s3.values


def test_discover_fills_common_keys(small_repo):
    inventory = discover(load_settings(small_repo))
    edge = inventory.shard("prod/us/edge/s3")

    assert edge.values["account_id"] == "333333333333"
    assert edge.values["region"] == "us-east-1"
    assert edge.values["project"] == "edge"
    assert edge.values["environment"] == "prod"
    assert edge.values["tags"] == {}
    assert edge.values["repo_root"] == str(small_repo.resolve())


def test_unknown_key_names_line_and_suggestion(small_repo):
    write(small_repo / "Accounts" / "prod" / "media.tfvars", 'project = "media"\ns3_bucket = {\n  thumbnails = {}\n}\n')
    inventory = discover(load_settings(small_repo))

    messages = [str(d) for d in inventory.diagnostics]
    assert len(messages) == 1
    assert messages[0].startswith("Accounts/prod/media.tfvars:2:1:")
    assert "s3_bucket is not a known key" in messages[0]
    assert "did you mean s3_buckets?" in messages[0]


def test_syntax_error_becomes_diagnostic(small_repo):
    write(small_repo / "Accounts" / "prod" / "broken.tfvars", 'project = "broken\n')
    inventory = discover(load_settings(small_repo))

    assert len(inventory.diagnostics) == 1
    assert inventory.diagnostics[0].path == "Accounts/prod/broken.tfvars"
    assert inventory.diagnostics[0].line == 1


def test_invalid_account_json_is_reported(small_repo):
    write(small_repo / "Accounts" / "dev" / "account.json", json.dumps({"name": "dev", "account_id": "12"}))
    write(small_repo / "Accounts" / "dev" / "app.tfvars", "s3_buckets = {}\n")
    inventory = discover(load_settings(small_repo))

    messages = [str(d) for d in inventory.diagnostics]
    assert any(m.startswith("Accounts/dev/account.json") and "account_id" in m for m in messages)
    assert not any(shard.account.name == "dev" for shard in inventory.shards)


def test_account_name_must_match_folder(small_repo):
    make_account(small_repo, "qa", "444444444444")
    data = json.loads((small_repo / "Accounts" / "qa" / "account.json").read_text())
    data["name"] = "quality"
    write(small_repo / "Accounts" / "qa" / "account.json", json.dumps(data))
    inventory = discover(load_settings(small_repo))

    assert any("differs from the folder name" in str(d) for d in inventory.diagnostics)


def test_service_dependency_cycle_is_rejected(small_repo):
    make_service(small_repo, "kms", ["kms_keys"], depends_on=["s3"])
    with pytest.raises(ConfigurationError, match="cycle"):
        discover(load_settings(small_repo))


def test_two_services_claiming_one_key_is_rejected(small_repo):
    make_service(small_repo, "storage", ["s3_buckets"])
    with pytest.raises(ConfigurationError, match="both claim the key 's3_buckets'"):
        discover(load_settings(small_repo))


def test_template_repo_discovers_cleanly(template_repo):
    inventory = discover(load_settings(template_repo))

    assert inventory.diagnostics == []
    assert {"s3", "kms", "iam", "lambda"} <= set(inventory.services)
    assert len(inventory.accounts) >= 3
    assert {shard.service.name for shard in inventory.shards} >= {"s3", "kms", "iam", "lambda"}
    assert len({shard.region for shard in inventory.shards}) >= 2


def test_module_variables_read_with_python_hcl2(template_repo):
    declared = module_variables(template_repo / "modules" / "s3")
    assert {"s3_buckets", "account_id", "region", "project", "environment", "tags", "repo_root"} <= declared


def test_module_missing_variable_is_rejected(small_repo):
    write(small_repo / "modules" / "s3" / "variables.tf", 'variable "account_id" {}\n')
    with pytest.raises(ConfigurationError, match="modules/s3/ declares no variable for region, project"):
        discover(load_settings(small_repo))


def test_orchestrator_gets_python_hcl2_8():
    """Checkov's bc-python-hcl2 installs a package also named hcl2; the orchestrator must get python-hcl2 8.x."""
    from importlib.metadata import PackageNotFoundError, distribution

    import hcl2

    python_hcl2 = distribution("python-hcl2")
    owned_files = {str(python_hcl2.locate_file(f)) for f in python_hcl2.files}
    assert python_hcl2.version.startswith("8.")
    assert hcl2.__file__ in owned_files
    with pytest.raises(PackageNotFoundError):
        distribution("bc-python-hcl2")
    # python-hcl2 8.x keeps the quotes of block labels; the other package strips them.
    assert list(hcl2.loads('variable "x" {}\n')["variable"][0]) == ['"x"']


def test_module_python_hcl2_failure_falls_back(small_repo):
    # python-hcl2 cannot parse this file (Terraform would reject it at init too); discovery must
    # still find the variables, so that only Terraform decides whether a module is valid.
    variables = small_repo / "modules" / "s3" / "variables.tf"
    variables.write_text(variables.read_text() + 'variable "odd" {\n  default = 1\n}\nlocals { x = [for a in [1] : a if a >] }\n')
    declared = module_variables(small_repo / "modules" / "s3")
    assert {"s3_buckets", "odd"} <= declared
