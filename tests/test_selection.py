"""Selection flags and shard dependencies."""

from __future__ import annotations

import pytest

from orchestrator.discovery import discover
from orchestrator.errors import SelectionError
from orchestrator.selection import SelectionRequest, normalise_changed_path, select_shards, shard_dependencies
from orchestrator.settings import load_settings

from conftest import git
from test_discovery import make_account, make_service, write


@pytest.fixture
def repo(tmp_path):
    repo = tmp_path / "repo"
    make_service(repo, "kms", ["kms_keys"])
    make_service(repo, "s3", ["s3_buckets"], depends_on=["kms"])
    make_service(repo, "iam", ["iam_roles"], is_global=True)
    make_service(repo, "lambda", ["lambda_functions"], depends_on=["iam"])
    make_account(repo, "prod", "333333333333")
    make_account(repo, "staging", "222222222222")
    write(repo / "Accounts/prod/payments.tfvars", 'kms_keys = {}\ns3_buckets = {}\n')
    write(repo / "Accounts/prod/roles.tfvars", 'iam_roles = { api = { policy_files = ["Accounts/prod/iam/api.json"] } }\n')
    write(repo / "Accounts/prod/api.tfvars", 'region = "us-east-1"\nlambda_functions = { api = { source_dir = "Accounts/prod/lambda/api" } }\n')
    write(repo / "Accounts/staging/payments.tfvars", 'kms_keys = {}\ns3_buckets = {}\n')
    return repo


def select(repo, **flags) -> list[str]:
    settings = load_settings(repo)
    return [shard.id for shard in select_shards(discover(settings), settings, SelectionRequest(**flags))]


def test_all_selects_every_shard(repo):
    assert len(select(repo, all=True)) == 6


def test_changed_deployment_file_selects_its_shards(repo):
    assert select(repo, changed_files=["Accounts/prod/payments.tfvars"]) == ["prod/payments/kms", "prod/payments/s3"]


def test_changed_glob_selects_matching_files(repo):
    assert select(repo, changed_files=["Accounts/*/payments.tfvars"]) == ["prod/payments/kms", "prod/payments/s3", "staging/payments/kms", "staging/payments/s3"]


def test_module_change_selects_every_shard_of_service(repo):
    assert select(repo, changed_files=["modules/s3/main.tf"]) == ["prod/payments/s3", "staging/payments/s3"]


def test_account_file_change_selects_account(repo):
    assert len(select(repo, changed_files=["Accounts/staging/account.json"])) == 2


def test_referenced_file_change_selects_referencing_shard(repo):
    assert select(repo, changed_files=["Accounts/prod/iam/api.json"]) == ["prod/roles/iam"]
    assert select(repo, changed_files=["Accounts/prod/lambda/api/handler.py"]) == ["prod/api/lambda"]


def test_policy_change_selects_everything(repo):
    assert len(select(repo, changed_files=["policies/encryption.rego"])) == 6


def test_unrelated_change_selects_nothing(repo):
    assert select(repo, changed_files=["README.md"]) == []


def test_filters_narrow_selection(repo):
    assert select(repo, all=True, services=["s3"], regions=["eu-west-1"], accounts=["prod"]) == ["prod/payments/s3"]


def test_deployment_selects_file_or_single_shard(repo):
    assert select(repo, deployments=["prod/payments"]) == ["prod/payments/kms", "prod/payments/s3"]
    assert select(repo, deployments=["prod/payments/s3"]) == ["prod/payments/s3"]


def test_unknown_names_raise_with_suggestion(repo):
    with pytest.raises(SelectionError, match="Did you mean prod/payments"):
        select(repo, deployments=["prod/paymnts"])
    with pytest.raises(SelectionError, match="--account prd: no such account. Did you mean prod"):
        select(repo, all=True, accounts=["prd"])
    with pytest.raises(SelectionError, match="no such service"):
        select(repo, all=True, services=["rds"])


def test_no_selection_flags_is_an_error(repo):
    with pytest.raises(SelectionError, match="nothing to select"):
        select(repo)


@pytest.mark.parametrize("path", ["../outside.tfvars", "Accounts/../../etc/passwd", "/etc/passwd"])
def test_paths_leaving_repo_are_rejected(repo, path):
    with pytest.raises(SelectionError):
        normalise_changed_path(path, repo.resolve())


def test_symlink_leading_out_is_rejected(repo, tmp_path):
    outside = tmp_path / "outside.tfvars"
    outside.write_text("s3_buckets = {}\n")
    (repo / "Accounts/prod/link.tfvars").symlink_to(outside)
    with pytest.raises(SelectionError, match="leads outside"):
        normalise_changed_path("Accounts/prod/link.tfvars", repo.resolve())


def test_since_uses_git_diff(repo):
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "start")
    write(repo / "Accounts/staging/payments.tfvars", 'kms_keys = { new = {} }\ns3_buckets = {}\n')
    assert select(repo, since="HEAD") == ["staging/payments/kms", "staging/payments/s3"]


def test_since_unknown_ref_is_clear(repo):
    git(repo, "init", "-q")
    with pytest.raises(SelectionError, match="fetch-depth"):
        select(repo, since="no-such-branch")


def test_dependencies_follow_services_accounts_and_regions(repo):
    settings = load_settings(repo)
    dependencies = shard_dependencies(discover(settings).shards)

    assert dependencies["prod/payments/s3"] == {"prod/payments/kms"}
    assert dependencies["staging/payments/s3"] == {"staging/payments/kms"}
    # IAM is global: the us-east-1 function waits for the eu-west-1 roles of its account.
    assert dependencies["prod/api/lambda"] == {"prod/roles/iam"}
    assert dependencies["prod/payments/kms"] == set()
