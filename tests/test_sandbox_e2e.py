"""End to end on the sandbox: real Terraform and the real AWS provider against moto.

One module-scoped apply of every example shard, then checks of what it left behind: each
resource in its own account and region (listed with boto3), each state object at its key,
a second apply that writes no state, and a change to one file that re-plans only its shards.
"""

from __future__ import annotations

import io
import json
import os
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from orchestrator import sandbox
from orchestrator.cli import main as cli_main
from orchestrator.credentials import AwsTarget, assume_role, aws_client, base_credentials
from orchestrator.discovery import discover
from orchestrator.settings import load_settings

from conftest import copy_template, free_port, write_settings

pytestmark = pytest.mark.terraform


def run_cli(repo: Path, *argv: str) -> tuple[int, str]:
    """Run the CLI in-process and return its exit code and combined output."""
    output = io.StringIO()
    with redirect_stdout(output), redirect_stderr(output):
        code = cli_main(["--repo", str(repo), *argv])
    return code, output.getvalue()


def report_of(output: str, repo: Path) -> dict:
    latest = repo / ".orchestrator" / "runs" / "latest" / "report.json"
    return json.loads(latest.read_text())


@pytest.fixture(scope="module")
def sandbox_repo(tmp_path_factory):
    repo = copy_template(tmp_path_factory.mktemp("e2e") / "repo")
    port = free_port()
    write_settings(repo, f"[sandbox]\nport = {port}")
    settings = load_settings(repo)
    sandbox.up(settings)
    yield repo
    sandbox.down(settings)


@pytest.fixture(scope="module")
def first_apply(sandbox_repo):
    # A caller's stray AWS variables must not reach any shard: if they did, this profile
    # (which exists nowhere) would make every Terraform command fail.
    os.environ["AWS_PROFILE"] = "profile-that-does-not-exist"
    os.environ["AWS_ACCESS_KEY_ID"] = "AKIACALLERSHELL00000"
    try:
        code, output = run_cli(sandbox_repo, "apply", "--all", "--sandbox")
    finally:
        del os.environ["AWS_PROFILE"], os.environ["AWS_ACCESS_KEY_ID"]
    return code, output, report_of(output, sandbox_repo)


def account_client(settings, account, service: str, region: str):
    target = AwsTarget(endpoint=settings.sandbox.endpoint)
    credentials = assume_role(base_credentials(target), account.deploy_role_arn, "e2e-check", region, target)
    return aws_client(service, credentials, region, target)


def state_client(settings, region: str):
    target = AwsTarget(endpoint=settings.sandbox.endpoint)
    credentials = assume_role(base_credentials(target), settings.state.role_arn, "e2e-check", region, target)
    return aws_client("s3", credentials, region, target)


def test_first_apply_applies_every_shard(first_apply, sandbox_repo):
    code, output, report = first_apply
    statuses = {shard["shard_id"]: shard["status"] for shard in report["shards"]}

    assert code == 0, output
    assert statuses and set(statuses.values()) == {"applied"}, output
    assert len(statuses) == len(discover(load_settings(sandbox_repo)).shards)
    assert "shard" in output  # the summary table was printed
    assert "result" in output


def test_resources_exist_in_their_account_and_region(first_apply, sandbox_repo):
    settings = load_settings(sandbox_repo)
    inventory = discover(settings)
    checked = 0

    for shard in inventory.shards:
        values = shard.values
        if shard.service.name == "s3":
            s3 = account_client(settings, shard.account, "s3", shard.region)
            names = {bucket["Name"] for bucket in s3.list_buckets()["Buckets"]}
            for name in values["s3_buckets"]:
                bucket = f"{shard.project}-{name}-{shard.account_id}-{shard.region}"
                assert bucket in names, f"{bucket} missing in account {shard.account.name}"
                assert s3.get_bucket_location(Bucket=bucket)["LocationConstraint"] in (shard.region, None)
                expected_versioning = "Enabled" if values["s3_buckets"][name].get("versioning", True) else "Suspended"
                assert s3.get_bucket_versioning(Bucket=bucket).get("Status") == expected_versioning
                rules = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
                expected = "aws:kms" if values["s3_buckets"][name].get("kms_key_alias") else "AES256"
                assert rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == expected
                checked += 1
        elif shard.service.name == "kms":
            kms = account_client(settings, shard.account, "kms", shard.region)
            aliases = {alias["AliasName"]: alias.get("TargetKeyId") for alias in kms.list_aliases()["Aliases"]}
            for name, key in values["kms_keys"].items():
                alias = key.get("alias") or f"alias/{shard.project}-{name}"
                assert alias in aliases, f"{alias} missing in {shard.account.name}/{shard.region}"
                assert kms.get_key_rotation_status(KeyId=aliases[alias])["KeyRotationEnabled"] is True
                checked += 1
        elif shard.service.name == "iam":
            iam = account_client(settings, shard.account, "iam", shard.region)
            roles = {role["RoleName"] for role in iam.list_roles()["Roles"]}
            for name in values["iam_roles"]:
                assert name in roles, f"role {name} missing in {shard.account.name}"
                checked += 1
        elif shard.service.name == "lambda":
            functions_client = account_client(settings, shard.account, "lambda", shard.region)
            functions = {f["FunctionName"]: f for f in functions_client.list_functions()["Functions"]}
            for name, spec in values["lambda_functions"].items():
                function = functions.get(f"{shard.project}-{name}")
                assert function is not None, f"function {shard.project}-{name} missing in {shard.account.name}/{shard.region}"
                assert function["Role"].startswith(f"arn:aws:iam::{shard.account_id}:role/")
                checked += 1
    assert checked >= 8


def test_resources_do_not_leak_into_other_accounts(first_apply, sandbox_repo):
    settings = load_settings(sandbox_repo)
    inventory = discover(settings)
    state_buckets = {settings.state.bucket_for(region) for account in inventory.accounts.values() for region in account.regions}
    state_buckets |= {settings.state.bucket_for(settings.audit.region), settings.audit.bucket}

    for account in inventory.accounts.values():
        expected = {
            f"{shard.project}-{name}-{shard.account_id}-{shard.region}"
            for shard in inventory.shards
            if shard.account.name == account.name and shard.service.name == "s3"
            for name in shard.values["s3_buckets"]
        }
        s3 = account_client(settings, account, "s3", account.default_region)
        found = {bucket["Name"] for bucket in s3.list_buckets()["Buckets"]} - state_buckets
        assert found == expected, f"buckets of account {account.name}"


def test_state_objects_exist_at_their_keys(first_apply, sandbox_repo):
    settings = load_settings(sandbox_repo)
    for shard in discover(settings).shards:
        s3 = state_client(settings, shard.region)
        bucket = settings.state.bucket_for(shard.region)
        head = s3.head_object(Bucket=bucket, Key=shard.state_key)
        assert head["ServerSideEncryption"] in ("AES256", "aws:kms")
        state = json.loads(s3.get_object(Bucket=bucket, Key=shard.state_key)["Body"].read())
        assert state["resources"], f"state of {shard.id} is empty"


def _state_versions(settings, inventory) -> dict[str, list[str]]:
    versions = {}
    for shard in inventory.shards:
        s3 = state_client(settings, shard.region)
        listing = s3.list_object_versions(Bucket=settings.state.bucket_for(shard.region), Prefix=shard.state_key)
        # The prefix also lists the lock file (<key>.tflock), which every plan writes and deletes.
        versions[shard.id] = sorted(v["VersionId"] for v in listing.get("Versions", []) if v["Key"] == shard.state_key)
    return versions


def test_second_apply_changes_nothing(first_apply, sandbox_repo):
    settings = load_settings(sandbox_repo)
    inventory = discover(settings)
    before = _state_versions(settings, inventory)

    code, output = run_cli(sandbox_repo, "apply", "--all", "--sandbox")
    report = report_of(output, sandbox_repo)

    assert code == 0, output
    assert {shard["status"] for shard in report["shards"]} == {"no changes"}, output
    # An unchanged shard runs one terraform command: the plan that finds nothing to do.
    assert all([c["command"] for c in shard["commands"]] == ["terraform plan"] for shard in report["shards"]), output
    assert _state_versions(settings, inventory) == before


def test_editing_one_file_replans_only_its_shards(first_apply, sandbox_repo):
    deployment = sandbox_repo / "Accounts" / "staging" / "payments.tfvars"
    original = deployment.read_text()
    deployment.write_text(original.replace("tags = {", "tags = {\n  Reviewed = \"yes\"", 1))
    try:
        code, output = run_cli(sandbox_repo, "plan", "--changed-files", "Accounts/staging/payments.tfvars", "--sandbox", "--detailed-exitcode")
        report = report_of(output, sandbox_repo)
    finally:
        deployment.write_text(original)

    assert code == 2, output
    assert sorted(s["shard_id"] for s in report["shards"]) == ["staging/payments/kms", "staging/payments/s3"]
    assert {s["status"] for s in report["shards"]} == {"planned"}
    assert all(s["counts"]["change"] >= 1 for s in report["shards"])


def test_plan_file_and_json_are_private(first_apply, sandbox_repo):
    code, output = run_cli(sandbox_repo, "plan", "--deployment", "prod/payments/kms", "--sandbox")
    assert code == 0, output
    runs = sorted((sandbox_repo / ".orchestrator" / "runs").glob("*/shards/**/plan.*"))
    assert runs, "no plan artefacts were kept"
    for path in runs:
        assert oct(path.stat().st_mode & 0o777) == oct(0o600), path


def test_apply_uses_saved_plan_and_replans_dependents(first_apply, sandbox_repo):
    deployment = sandbox_repo / "Accounts" / "staging" / "payments.tfvars"
    deployment.write_text(deployment.read_text().replace("tags = {", 'tags = {\n  Reviewed = "yes"', 1))

    code, output = run_cli(sandbox_repo, "plan", "--deployment", "staging/payments", "--sandbox")
    assert code == 0, output
    code, output = run_cli(sandbox_repo, "apply", "--deployment", "staging/payments", "--sandbox")
    shards = {s["shard_id"]: s for s in report_of(output, sandbox_repo)["shards"]}

    assert code == 0, output
    assert shards["staging/payments/kms"]["status"] == "applied"
    assert shards["staging/payments/kms"]["used_saved_plan"] is True
    # The saved plan is applied as it is; only the state backup comes before it.
    assert [c["command"] for c in shards["staging/payments/kms"]["commands"]] == ["terraform state pull", "terraform apply"]
    # The bucket shard's saved plan predates the key's apply, so it is planned again.
    assert shards["staging/payments/s3"]["status"] == "applied"
    assert shards["staging/payments/s3"]["used_saved_plan"] is False
    assert [c["command"] for c in shards["staging/payments/s3"]["commands"]] == ["terraform plan", "terraform show", "terraform state pull", "terraform apply"]


def test_each_shard_has_its_own_log(first_apply, sandbox_repo):
    _, _, report = first_apply
    for shard in report["shards"]:
        assert shard["log_file"], f"{shard['shard_id']} has no log ({shard['status']}: {shard['error']})"
        log = Path(shard["log_file"]).read_text()
        assert "plan -input=false -no-color" in log, shard["shard_id"]
        assert "apply -input=false -no-color" in log, shard["shard_id"]
        assert "aws_secret_access_key" not in log


def test_dynamodb_lock_table_option(first_apply, sandbox_repo, tmp_path):
    repo = copy_template(tmp_path / "dynamodb-repo")
    (repo / "orchestrator.toml").write_text((sandbox_repo / "orchestrator.toml").read_text() + '\n[state]\nlock = "dynamodb"\n')

    code, output = run_cli(repo, "plan", "--deployment", "prod/payments/kms", "--sandbox")
    settings = load_settings(repo)
    backend = json.loads((repo / ".orchestrator/shards/prod/payments/kms/orchestrator_backend.tf.json").read_text())

    assert code == 0, output
    assert report_of(output, repo)["shards"][0]["status"] == "no changes"
    assert backend["terraform"]["backend"]["s3"]["dynamodb_table"] == settings.state.dynamodb_table
    assert "use_lockfile" not in backend["terraform"]["backend"]["s3"]
    target = AwsTarget(endpoint=settings.sandbox.endpoint)
    state = assume_role(base_credentials(target), settings.state.role_arn, "e2e-check", "eu-west-1", target)
    tables = aws_client("dynamodb", state, settings.audit.region, target).list_tables()["TableNames"]
    assert settings.state.dynamodb_table in tables


def test_first_apply_checked_policies(first_apply):
    _, _, report = first_apply
    for shard in report["shards"]:
        policy = shard["policy"]
        assert policy, f"{shard['shard_id']} has no policy verdict ({shard['status']}: {shard['error']})"
        assert policy["status"] in ("passed", "passed with warnings"), shard["shard_id"]
        assert policy["opa_rules"] > 0, shard["shard_id"]
        assert policy["checkov"]["passed"] > 0, shard["shard_id"]


def test_policy_failure_blocks_apply(first_apply, sandbox_repo):
    deployment = sandbox_repo / "Accounts" / "staging" / "payments.tfvars"
    original = deployment.read_text()
    deployment.write_text(original.replace("s3_buckets = {", 's3_buckets = {\n  open = {\n    versioning          = true\n    block_public_access = false\n  }\n', 1))
    try:
        code, output = run_cli(sandbox_repo, "apply", "--deployment", "staging/payments/s3", "--sandbox")
        shard = report_of(output, sandbox_repo)["shards"][0]
    finally:
        deployment.write_text(original)

    assert code == 1, output
    assert shard["status"] == "failed"
    assert shard["policy"]["status"] == "failed"
    assert any("public" in failure.lower() for failure in shard["policy"]["failures"]), shard["policy"]
    assert "terraform apply" not in [c["command"] for c in shard["commands"]]
    settings = load_settings(sandbox_repo)
    account = discover(settings).accounts["staging"]
    names = {b["Name"] for b in account_client(settings, account, "s3", "eu-west-1").list_buckets()["Buckets"]}
    assert not any(name.startswith("payments-open-") for name in names)


def test_plan_posts_sticky_comment_and_survives_github_failures(first_apply, sandbox_repo, tmp_path, monkeypatch):
    from github_fake import FakeGitHub

    github = FakeGitHub("test-token", repository="octo-org/infra", pull_requests=(7,)).start()
    try:
        summary = tmp_path / "step-summary.md"
        monkeypatch.setenv("GITHUB_API_URL", github.api_url)
        monkeypatch.setenv("GITHUB_TOKEN", "test-token")
        monkeypatch.setenv("GITHUB_REPOSITORY", "octo-org/infra")
        monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))

        for _ in range(2):
            code, output = run_cli(sandbox_repo, "plan", "--deployment", "staging/payments", "--sandbox", "--comment", "--pr", "7")
            assert code == 0, output
        comments = github.comments(7)
        # The second plan updated the first comment instead of adding another one.
        assert len(comments) == 1, comments
        assert "| shard | account |" in comments[0]["body"]
        assert "staging/payments/kms" in comments[0]["body"]
        assert "| shard | account |" in summary.read_text()

        # GitHub failing every request costs the plan nothing but a warning.
        github.fail_next(None, 503)
        code, output = run_cli(sandbox_repo, "plan", "--deployment", "staging/payments", "--sandbox", "--comment", "--pr", "7")
        assert code == 0, output
        assert "warning: comment:" in output
    finally:
        github.close()
