"""The Markdown report: summary first, a section per shard, safe fences, no values, redaction."""

from __future__ import annotations

import shutil

from orchestrator.markdown_report import code_block, render_markdown, resource_changes, strip_escape_sequences
from orchestrator.plan_summary import ChangeCounts
from orchestrator.runs import RunReport
from orchestrator.shard_pipeline import ShardResult

from conftest import PROJECT_ROOT

PLANS = PROJECT_ROOT / "tests" / "data" / "plans"


def shard_result(tmp_path, **changes) -> ShardResult:
    plan = tmp_path / "plan.json"
    shutil.copy(PLANS / "prod--payments--s3.json", plan)
    fields = dict(
        shard_id="prod/payments/s3", account="prod", account_id="333333333333", region="eu-west-1", service="s3",
        project="payments", state_key="s3/333333333333/eu-west-1/payments/terraform.tfstate", deployment_file="Accounts/prod/payments.tfvars",
        status="planned", counts=ChangeCounts(add=8), has_changes=True, plan_json_file=str(plan),
        policy={"status": "passed", "opa_rules": 9, "checkov": {"passed": 20, "failed": 0, "soft_failed": 0}, "failures": [], "warnings": [], "errors": []},
    )
    fields.update(changes)
    return ShardResult(**fields)


def report_with(*results) -> RunReport:
    report = RunReport(run_id="20261204T000000Z-abc123", action="plan", selection="--all", started_at="2026-12-04T00:00:00+00:00", terraform="terraform 1.11.4")
    report.results = list(results)
    return report


def test_summary_table_comes_first(tmp_path):
    text = render_markdown(report_with(shard_result(tmp_path)))
    assert text.index("| shard | account |") < text.index("<details>")
    assert "| prod/payments/s3 | prod | eu-west-1 | s3 | 8 | 0 | 0 | 0 | 0 | 0 | passed | planned |" in text


def test_section_lists_addresses_not_values(tmp_path):
    text = render_markdown(report_with(shard_result(tmp_path)))
    assert '+ create aws_s3_bucket.this["ledger"]' in text
    assert "payments-ledger-333333333333-eu-west-1" not in text  # a planned value, never shown
    assert text.count("<details>") == text.count("</details>") == 1


def test_resource_changes_skip_no_ops():
    changes = resource_changes(str(PLANS / "prod--payments--s3.json"))
    assert changes
    assert all(line.split(" ")[0] in {"+", "~", "-", "-/+", "+/-", "."} for line in changes)


def test_backticks_cannot_break_the_fence():
    block = code_block("before\n```\nafter ```` end")
    fence = block.splitlines()[0]
    assert fence == "`````"
    assert block.endswith("\n`````")


def test_escape_sequences_are_stripped():
    assert strip_escape_sequences("\x1b[31mError\x1b[0m: bad\x07") == "Error: bad"


def test_errors_are_redacted(tmp_path):
    result = shard_result(tmp_path, status="failed", error="Error: AccessDenied for AKIAIOSFODNN7EXAMPLE\npassword = \"hunter2-secret\"")
    text = render_markdown(report_with(result))
    assert "AKIAIOSFODNN7EXAMPLE" not in text
    assert "hunter2-secret" not in text
    assert "Error: AccessDenied" in text


def test_policy_findings_are_listed(tmp_path):
    policy = {"status": "failed", "opa_rules": 9, "checkov": {"passed": 1, "failed": 1, "soft_failed": 0}, "failures": ["main.deny: bucket open has public access"], "warnings": ["checkov CKV_AWS_50 (soft fail)"], "errors": []}
    text = render_markdown(report_with(shard_result(tmp_path, policy=policy, status="failed")))
    assert "- Failure: main.deny: bucket open has public access" in text
    assert "- Warning: checkov CKV_AWS_50 (soft fail)" in text
