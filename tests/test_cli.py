"""The command line: exit codes and the clear errors a new user meets first."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from orchestrator import sandbox
from orchestrator.cli import main
from orchestrator.credentials import AwsTarget, CredentialBroker, SandboxUnreachable
from orchestrator.sandbox import SandboxError
from orchestrator.settings import load_settings

from conftest import PROJECT_ROOT, free_port


def run(repo, *argv, capsys) -> tuple[int, str]:
    code = main(["--repo", str(repo), *argv])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_validate_succeeds_on_template(template_repo, capsys):
    code, output = run(template_repo, "validate", capsys=capsys)
    assert code == 0
    assert "valid: " in output


def test_validate_failure_exits_3_with_positions(template_repo, capsys):
    (template_repo / "Accounts/prod/broken.tfvars").write_text('project = "broken\n')
    (template_repo / "Accounts/staging/typo.tfvars").write_text('project = "typo"\ns3_bucket = {}\n')
    code, output = run(template_repo, "validate", capsys=capsys)

    assert code == 3
    assert "Accounts/prod/broken.tfvars:1:" in output
    assert "Accounts/staging/typo.tfvars:2:1: s3_bucket is not a known key; did you mean s3_buckets?" in output
    assert "2 error(s) in 2 file(s)" in output


def test_plan_refuses_invalid_repo_before_any_cloud_call(template_repo, capsys):
    (template_repo / "Accounts/prod/broken.tfvars").write_text('project = "broken\n')
    code, output = run(template_repo, "plan", "--all", capsys=capsys)
    assert code == 3
    assert not (template_repo / ".orchestrator" / "runs").exists()


def test_unknown_account_exits_4(template_repo, capsys):
    code, output = run(template_repo, "plan", "--all", "--account", "prd", capsys=capsys)
    assert code == 4
    assert "--account prd: no such account. Did you mean prod?" in output


def test_unknown_shard_exits_4(template_repo, capsys):
    code, output = run(template_repo, "plan", "--deployment", "prod/paymnts/s3", capsys=capsys)
    assert code == 4
    assert "no such deployment or shard" in output
    assert "prod/payments/s3" in output


def test_nothing_selected_exits_4(template_repo, capsys):
    code, output = run(template_repo, "plan", capsys=capsys)
    assert code == 4
    assert "nothing to select: pass --all" in output


def test_unaffected_change_is_not_an_error(template_repo, capsys):
    code, output = run(template_repo, "plan", "--changed-files", "README.md", capsys=capsys)
    assert code == 0
    assert "No shard is affected" in output


def test_missing_terraform_is_clear(template_repo, capsys):
    (template_repo / "orchestrator.toml").write_text('[terraform]\nbinary = "terraform-that-is-not-installed"\n')
    code, output = run(template_repo, "plan", "--all", "--sandbox", capsys=capsys)
    assert code == 4
    assert "terraform-that-is-not-installed not found on PATH; install Terraform" in output


def test_provider_missing_from_configured_mirror_is_clear(template_repo, tmp_path, capsys):
    empty_mirror = tmp_path / "empty-mirror"
    empty_mirror.mkdir()
    (template_repo / "orchestrator.toml").write_text(f'[terraform]\nprovider_mirror = "{empty_mirror}"\n')
    code, output = run(template_repo, "plan", "--all", "--sandbox", capsys=capsys)
    assert code == 4
    assert f"provider mirror {empty_mirror} contains no provider" in output


def test_invalid_settings_name_the_key(template_repo, capsys):
    (template_repo / "orchestrator.toml").write_text('[state]\nlock = "consul"\n')
    code, output = run(template_repo, "validate", capsys=capsys)
    assert code == 4
    assert "state.lock" in output


def test_busy_port_is_a_clear_error(template_repo):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        (template_repo / "orchestrator.toml").write_text(f"[sandbox]\nport = {port}\n")
        with pytest.raises(SandboxError, match=f"port {port} on 127.0.0.1 is in use"):
            sandbox.up(load_settings(template_repo))


def test_unreachable_sandbox_is_clear(tmp_path):
    endpoint = f"http://127.0.0.1:{free_port()}"
    broker = CredentialBroker(AwsTarget(endpoint), "arn:aws:iam::111111111111:role/terraform-state", "run", tmp_path, "eu-west-1")
    with pytest.raises(SandboxUnreachable, match="does not respond; start it with invoke sandbox.up"):
        broker.state_credentials()


def test_sandbox_status_when_stopped(template_repo, capsys):
    (template_repo / "orchestrator.toml").write_text(f"[sandbox]\nport = {free_port()}\n")
    code, output = run(template_repo, "sandbox", "status", capsys=capsys)
    assert code == 1
    assert "not running" in output


def test_python_module_and_invoke_reach_same_entry_point(template_repo):
    by_module = subprocess.run([sys.executable, "-m", "orchestrator", "--repo", str(template_repo), "shards", "--json"], capture_output=True, text=True, check=True)
    by_invoke = subprocess.run([sys.executable, "-m", "invoke", "--search-root", str(PROJECT_ROOT), "shards", "--json"], cwd=template_repo, capture_output=True, text=True, check=True)

    module_rows = json.loads(by_module.stdout)
    invoke_rows = json.loads(by_invoke.stdout)
    assert module_rows == invoke_rows
    assert {row["service"] for row in module_rows} >= {"s3", "kms", "iam", "lambda"}


def test_validate_json_report_lists_every_error(template_repo, capsys, tmp_path):
    (template_repo / "Accounts/prod/broken.tfvars").write_text('project = "broken\n')
    (template_repo / "Accounts/staging/typo.tfvars").write_text('project = "typo"\ns3_bucket = {}\n')
    report_path = tmp_path / "validation.json"
    code, _ = run(template_repo, "validate", "--json", str(report_path), capsys=capsys)
    report = json.loads(report_path.read_text())

    assert code == 3
    assert report["valid"] is False
    assert [(d["path"], d["line"]) for d in report["diagnostics"]] == [("Accounts/prod/broken.tfvars", 1), ("Accounts/staging/typo.tfvars", 2)]
    assert all(d["column"] >= 1 and d["message"] for d in report["diagnostics"])
