"""Files named in deployment files: present, inside the repo, valid IAM policy JSON."""

from __future__ import annotations

import json

import pytest

from orchestrator.discovery import discover
from orchestrator.references import iam_policy_problems
from orchestrator.settings import load_settings
from orchestrator.validation import validate_inventory, validation_warnings


def messages(repo) -> list[str]:
    settings = load_settings(repo)
    return [str(d) for d in validate_inventory(discover(settings), settings.repo_root)]


def test_template_references_are_valid(template_repo):
    assert messages(template_repo) == []


def test_missing_policy_file_names_tfvars_line(template_repo):
    (template_repo / "Accounts/prod/iam/orders-api.json").unlink()
    found = messages(template_repo)
    assert len(found) == 1
    assert found[0].startswith("Accounts/prod/orders-api.tfvars:")
    assert "iam_roles.orders-api.policy_files: 'Accounts/prod/iam/orders-api.json' does not exist" in found[0]


def test_invalid_policy_json_names_both_files(template_repo):
    (template_repo / "Accounts/prod/iam/orders-api.json").write_text('{\n  "Version": "2012-10-17",\n  "Statement": [\n}\n')
    found = messages(template_repo)
    assert any(m.startswith("Accounts/prod/iam/orders-api.json:4:1: invalid JSON") for m in found), found
    assert any(m.startswith("Accounts/prod/orders-api.tfvars:") and "is not valid JSON" in m for m in found), found


def test_policy_shape_is_checked(template_repo):
    (template_repo / "Accounts/prod/iam/orders-api.json").write_text(json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Permit", "Action": "s3:GetObject"}]}))
    found = messages(template_repo)
    assert any("Effect must be \"Allow\" or \"Deny\", not 'Permit'" in m for m in found), found
    assert any("Resource (or NotResource) is missing" in m for m in found), found


def test_reference_outside_repo_is_rejected(template_repo, tmp_path):
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
    (template_repo / "Accounts/prod/iam/link.json").symlink_to(outside)
    tfvars = template_repo / "Accounts/prod/orders-api.tfvars"
    tfvars.write_text(tfvars.read_text().replace("Accounts/prod/iam/orders-api.json", "Accounts/prod/iam/link.json"))
    found = messages(template_repo)
    assert any("points outside the repository" in m for m in found), found


def test_inline_policy_heredoc_is_checked(template_repo):
    tfvars = template_repo / "Accounts/prod/orders-api.tfvars"
    tfvars.write_text(tfvars.read_text().replace('    policy_files     = ["Accounts/prod/iam/orders-api.json"]', '    inline_policy    = <<-EOT\n      {"Version": "2012-10-17", "Statement": [\n    EOT'))
    found = messages(template_repo)
    assert any("iam_roles.orders-api.inline_policy: is not valid JSON" in m for m in found), found


def test_missing_lambda_source_is_a_warning(template_repo):
    tfvars = template_repo / "Accounts/prod/orders-api.tfvars"
    tfvars.write_text(tfvars.read_text().replace('    source_dir  = "functions/orders-api"\n', ""))
    settings = load_settings(template_repo)
    inventory = discover(settings)
    assert validate_inventory(inventory, settings.repo_root) == []
    warnings = [str(w) for w in validation_warnings(inventory)]
    assert any(w.startswith("Accounts/prod/orders-api.tfvars:") and "source_dir is missing" in w for w in warnings), warnings


@pytest.mark.parametrize(
    "document, needs_principal, expected",
    [
        ({"Version": "2012-10-17", "Statement": {"Effect": "Allow", "Action": "s3:*", "Resource": "*"}}, False, []),
        ({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}]}, True, []),
        ({"Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}, False, ["Version is missing"]),
        ({"Version": "2012-10-17", "Statement": []}, False, ["Statement is missing or empty"]),
        ({"Version": "2012-10-17", "Statment": [], "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}, False, ["unknown top-level key 'Statment'"]),
        ({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole"}]}, True, ["Principal is missing"]),
        ([1, 2], False, ["JSON object"]),
    ],
)
def test_iam_policy_shape(document, needs_principal, expected):
    problems = iam_policy_problems(document, needs_principal)
    assert len(problems) == len(expected), problems
    for problem, fragment in zip(problems, expected):
        assert fragment in problem
