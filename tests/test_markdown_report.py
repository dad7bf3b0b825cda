"""The Markdown report: summary first, a section per shard, safe fences, no values, redaction."""

from __future__ import annotations

import re
import shutil

import json

from orchestrator.markdown_report import code_block, describe_counts, render_markdown, resource_changes, strip_escape_sequences
from orchestrator.plan_summary import ChangeCounts
from orchestrator.rollback import NOT_ROLLED_BACK, PARTLY_ROLLED_BACK, ROLLED_BACK, RollbackOutcome
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
    assert "| shard | account | region | service | create | update | delete | replace | import | move | forget | policy | status |" in text
    assert "| prod/payments/s3 | prod | eu-west-1 | s3 | 8 | 0 | 0 | 0 | 0 | 0 | 0 | passed | planned |" in text


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


def write_plan(path, changes) -> str:
    """Write a minimal ``terraform show -json`` document with ``(address, actions, extra)`` changes."""
    resource_changes = []
    for address, actions, extra in changes:
        change = {"actions": actions, "after": {"secret_value": "s3cr3t-planned-value"}}
        change.update(extra)
        resource_changes.append({"address": address, "mode": "managed", "change": change})
    path.write_text(json.dumps({"format_version": "1.2", "resource_changes": resource_changes}), encoding="utf-8")
    return str(path)


def fence_problems(text: str) -> list[str]:
    """Return where ``text`` leaves a code fence or a <details> block unbalanced."""
    problems = []
    fence = ""
    depth = 0
    for number, line in enumerate(text.split("\n"), start=1):
        match = re.match(r"^ {0,3}(`{3,}|~{3,})(.*)$", line)
        if fence:
            if match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence) and not match.group(2).strip():
                fence = ""
            continue
        if match:
            fence = match.group(1)
        elif line.strip().startswith("<details"):
            depth += 1
        elif line.strip() == "</details>":
            depth -= 1
            if depth < 0:
                problems.append(f"line {number}: </details> without <details>")
                depth = 0
    if fence:
        problems.append(f"fence {fence} still open at the end")
    if depth:
        problems.append(f"{depth} <details> still open at the end")
    return problems


def test_forget_and_import_counts_in_table(tmp_path):
    counts = ChangeCounts(add=2, change=1, destroy=3, replace=1, importing=4, move=5, forget=6)
    text = render_markdown(report_with(shard_result(tmp_path, counts=counts)))
    assert "| prod/payments/s3 | prod | eu-west-1 | s3 | 2 | 1 | 3 | 1 | 4 | 5 | 6 | passed | planned |" in text


def test_describe_counts_adds_nonzero_extras():
    assert describe_counts(ChangeCounts(add=2, change=1, destroy=1)) == "2 to add, 1 to change, 1 to destroy"
    assert describe_counts(ChangeCounts(add=1, destroy=1, replace=1, importing=2, forget=1)) == "1 to add, 0 to change, 1 to destroy, 1 to replace, 2 to import, 1 to forget"


def test_section_title_has_counts(tmp_path):
    text = render_markdown(report_with(shard_result(tmp_path, counts=ChangeCounts(add=1, move=2))))
    assert "<summary>prod/payments/s3: planned (1 to add, 0 to change, 0 to destroy, 2 to move)</summary>" in text


def test_summary_states_totals(tmp_path):
    first = shard_result(tmp_path)
    second = shard_result(tmp_path, shard_id="prod/payments/kms", status="failed", error="Error: boom")
    text = render_markdown(report_with(first, second))
    assert text.split("\n")[2].endswith(" s. Shards by status: planned 1, failed 1.")


def test_interrupted_run_is_stated(tmp_path):
    report = report_with(shard_result(tmp_path, status="interrupted", has_changes=False))
    report.interrupted = True
    text = render_markdown(report)
    assert "The run was interrupted" in text
    assert text.index("The run was interrupted") < text.index("<details>")


def test_import_move_and_forget_lines(tmp_path):
    plan = write_plan(tmp_path / "moves.json", [
        ('aws_s3_bucket.imported', ["no-op"], {"importing": {"id": "bucket-1"}}),
        ('aws_s3_bucket.renamed', ["no-op"], {}),
        ('aws_s3_bucket.gone', ["forget"], {}),
        ('aws_s3_bucket.same', ["no-op"], {}),
    ])
    document = json.loads((tmp_path / "moves.json").read_text())
    document["resource_changes"][1]["previous_address"] = "aws_s3_bucket.old_name"
    (tmp_path / "moves.json").write_text(json.dumps(document))

    lines = resource_changes(plan)

    assert lines == [
        "no-op (import) aws_s3_bucket.imported",
        "no-op (moved from aws_s3_bucket.old_name) aws_s3_bucket.renamed",
        ". forget aws_s3_bucket.gone",
    ]


def test_plan_values_never_shown(tmp_path):
    plan = write_plan(tmp_path / "changes.json", [("aws_ssm_parameter.db", ["create"], {}), ("aws_s3_bucket.logs", ["delete", "create"], {})])
    text = render_markdown(report_with(shard_result(tmp_path, plan_json_file=plan)))
    assert "+ create aws_ssm_parameter.db" in text
    assert "-/+ replace aws_s3_bucket.logs" in text
    assert "s3cr3t-planned-value" not in text


def test_backticks_in_plan_text_stay_fenced(tmp_path):
    plan = write_plan(tmp_path / "changes.json", [
        ('aws_s3_object.this["```"]', ["create"], {}),
        ('aws_s3_object.this["````"]', ["create"], {}),
    ])
    error = "Error: bad template\n```\n````\nend of output"
    text = render_markdown(report_with(shard_result(tmp_path, plan_json_file=plan, status="failed", error=error)))

    assert fence_problems(text) == []
    assert "`````diff" in text
    assert '+ create aws_s3_object.this["````"]' in text
    assert "\n````\nend of output\n`````" in text


def test_backtick_lines_cannot_close_the_fence():
    block = code_block("```\n````\n```python")
    assert fence_problems(block) == []
    assert block.splitlines()[0] == "`````"


def test_escape_sequences_stripped_everywhere(tmp_path):
    policy = {"status": "failed", "opa_rules": 1, "checkov": {"passed": 0, "failed": 0, "soft_failed": 0}, "failures": ["\x1b[1mdeny\x1b[0m: open"], "warnings": [], "errors": []}
    result = shard_result(tmp_path, status="failed", policy=policy, notes=["note \x1b[33mwarning\x1b[0m"], error="\x1b[31mError:\x1b[0m boom")
    text = render_markdown(report_with(result))
    assert "\x1b" not in text
    assert "- Failure: deny: open" in text
    assert "- note warning" in text
    assert "Error: boom" in text


def test_notes_are_listed(tmp_path):
    result = shard_result(tmp_path, notes=["re-plan after prod/payments/kms applies"])
    text = render_markdown(report_with(result))
    assert "- re-plan after prod/payments/kms applies" in text


def test_policy_error_not_repeated_as_error(tmp_path):
    policy = {"status": "failed", "opa_rules": 9, "checkov": {"passed": 1, "failed": 1, "soft_failed": 0}, "failures": ["main.deny: open"], "warnings": [], "errors": []}
    text = render_markdown(report_with(shard_result(tmp_path, policy=policy, status="failed", error="policy: main.deny: open")))
    assert "- Failure: main.deny: open" in text
    assert "Error:" not in text


def rollback_result(tmp_path, outcome: RollbackOutcome):
    return shard_result(
        tmp_path, status="failed", error="prod/payments/s3: terraform apply failed\n  exit code: 1",
        rollback=outcome.as_dict(), notes=[outcome.describe()], backup_id=outcome.backup_id or "",
    )


def test_partial_rollback_outcome_shown(tmp_path):
    outcome = RollbackOutcome(
        PARTLY_ROLLED_BACK, target="the configuration applied by run 20261203T000000Z-aaaaaa (git 1234abc)", backup_id="b-1",
        created_by_failed_apply=['aws_s3_bucket.this["new"]'],
        planned=[{"address": 'aws_s3_bucket.this["new"]', "actions": ["delete"]}, {"address": 'aws_s3_bucket.this["old"]', "actions": ["update"]}],
        not_converged=[{"address": 'aws_s3_bucket.this["new"]', "actions": ["delete"]}],
        error="Error: deleting S3 Bucket (new): BucketNotEmpty",
    )
    text = render_markdown(report_with(rollback_result(tmp_path, outcome)))

    assert "Rollback: **partly rolled back**. Target: the configuration applied by run 20261203T000000Z-aaaaaa (git 1234abc); backup `b-1`; 2 change(s) planned." in text
    assert 'Not converged (these resources still differ from the target):\n\n```\ndelete aws_s3_bucket.this["new"]\n```' in text
    assert 'Created by the failed apply (before the rollback):\n\n```\naws_s3_bucket.this["new"]\n```' in text
    assert "Rollback error:\n\n```\nError: deleting S3 Bucket (new): BucketNotEmpty\n```" in text
    assert outcome.describe() not in text  # the one-line note repeats the section above
    assert "Error:\n\n```\nprod/payments/s3: terraform apply failed" in text
    assert fence_problems(text) == []


def test_complete_rollback_outcome_shown(tmp_path):
    outcome = RollbackOutcome(ROLLED_BACK, target="no resources (the failed apply was the shard's first)", backup_id="b-2", created_by_failed_apply=["aws_kms_key.this"], planned=[{"address": "aws_kms_key.this", "actions": ["delete"]}])
    text = render_markdown(report_with(rollback_result(tmp_path, outcome)))

    assert "Rollback: **rolled back**. Target: no resources (the failed apply was the shard's first); backup `b-2`; 1 change(s) planned." in text
    assert "Not converged" not in text
    assert "Created by the failed apply" not in text  # the rollback removed them


def test_missing_rollback_shown_with_reason(tmp_path):
    outcome = RollbackOutcome(NOT_ROLLED_BACK, target="-", backup_id=None, created_by_failed_apply=["aws_s3_bucket.stray"], error="no good configuration was recorded before this apply")
    text = render_markdown(report_with(rollback_result(tmp_path, outcome)))

    assert "Rollback: **not rolled back**. Target: -; backup `-`; 0 change(s) planned." in text
    assert "Created by the failed apply, still in place:\n\n```\naws_s3_bucket.stray\n```" in text
    assert "no good configuration was recorded before this apply" in text


def test_rollback_error_is_redacted(tmp_path):
    outcome = RollbackOutcome("rollback failed", target="-", backup_id="b-3", error="Error: AccessDenied for AKIAIOSFODNN7EXAMPLE")
    text = render_markdown(report_with(rollback_result(tmp_path, outcome)))
    assert "AKIAIOSFODNN7EXAMPLE" not in text
    assert "Rollback: **rollback failed**" in text
