"""The user cases end to end through invoke validate's code path: each in a real account folder."""

from __future__ import annotations

import shutil
import time

import pytest

from orchestrator.cli import main
from orchestrator.discovery import discover
from orchestrator.settings import load_settings

from conftest import PROJECT_ROOT

CASES = PROJECT_ROOT / "tests" / "data" / "tfvars"

INVALID = {
    "unclosed-brace.tfvars": (3, "`{` opened for `invoices` at line 3"),
    "stray-comma.tfvars": (5, "Doubled comma"),
    "unterminated-string.tfvars": (1, "string opened at line 1, column 11 is not terminated"),
    "mismatched-bracket.tfvars": (6, "`[` opened for `managed_policies` at line 4, column 24 is closed by `}` at line 6"),
}


def validate(repo, capsys) -> tuple[int, str]:
    code = main(["--repo", str(repo), "validate"])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.mark.parametrize("name", sorted(INVALID))
def test_invalid_case_rejected_with_position(template_repo, capsys, name):
    line, fragment = INVALID[name]
    shutil.copy(CASES / "invalid" / name, template_repo / "Accounts" / "staging" / name)

    started = time.monotonic()
    code, output = validate(template_repo, capsys)
    elapsed = time.monotonic() - started

    assert code == 3, output
    assert f"Accounts/staging/{name}:{line}:" in output
    assert fragment in output
    assert "Token" not in output  # no parser internals
    assert "Lark" not in output
    assert elapsed < 5  # generous: the case must be rejected in well under a second of work


def test_typo_key_case_suggests_known_key(template_repo, capsys):
    shutil.copy(CASES / "schema" / "typo-key.tfvars", template_repo / "Accounts" / "staging" / "typo-key.tfvars")
    code, output = validate(template_repo, capsys)
    assert code == 3
    assert "Accounts/staging/typo-key.tfvars:2:1: s3_bucket is not a known key; did you mean s3_buckets?" in output


@pytest.mark.parametrize("name", sorted(p.name for p in (CASES / "valid").glob("*.tfvars")))
def test_valid_case_accepted(template_repo, capsys, name):
    shutil.copy(CASES / "valid" / name, template_repo / "Accounts" / "staging" / name)
    code, output = validate(template_repo, capsys)
    assert code == 0, output


def test_valid_cases_hand_on_terraform_values(template_repo):
    for path in (CASES / "valid").glob("*.tfvars"):
        shutil.copy(path, template_repo / "Accounts" / "staging" / path.name)
    inventory = discover(load_settings(template_repo))
    by_file = {d.path.split("/")[-1]: d.document.values for d in inventory.deployments}

    assert by_file["comment-in-list.tfvars"]["s3_buckets"]["raw"]["readers"] == ["analytics", "ml-platform"]
    assert by_file["empty-heredoc.tfvars"]["kms_keys"]["audit"]["description"] == ""
    assert by_file["heredoc-quote.tfvars"]["lambda_functions"]["notifier"]["description"] == 'Posts a "deploy finished message to chat\n'
    assert "${aws:username}" in by_file["iam-escape.tfvars"]["iam_roles"]["developer"]["inline_policy"]
    assert "$${" not in by_file["iam-escape.tfvars"]["iam_roles"]["developer"]["inline_policy"]
    assert by_file["unicode.tfvars"]["project"] == "café-münchen"
    assert by_file["unicode.tfvars"]["tags"] == {"Owner": "Zoë Ångström", "CostCentre": "€-42"}
    # The escape stays in the file that Terraform reads.
    assert "$${aws:username}" in (template_repo / "Accounts" / "staging" / "iam-escape.tfvars").read_text()
