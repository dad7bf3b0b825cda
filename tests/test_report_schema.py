"""The JSON report schema: real reports validate, broken ones fail with the path of each problem."""

from __future__ import annotations

import copy
import dataclasses
import json

import jsonschema
import pytest

from orchestrator.plan_summary import ChangeCounts
from orchestrator.policy.stage import PolicyVerdict
from orchestrator.report_schema import json_path, report_problems, validate_report
from orchestrator.rollback import NOT_ROLLED_BACK, PARTLY_ROLLED_BACK, ROLLBACK_FAILED, ROLLED_BACK, RollbackOutcome
from orchestrator.runs import RunReport, write_report
from orchestrator.settings import load_schema
from orchestrator.shard_pipeline import (
    APPLIED,
    INTERRUPTED,
    NO_CHANGES,
    PLANNED,
    STATUS_FAILED,
    STATUS_SKIPPED,
    WAITING,
    ShardResult,
)

from conftest import PROJECT_ROOT

REPORTS = PROJECT_ROOT / "tests" / "data" / "reports"
EVERY_STATUS = (NO_CHANGES, PLANNED, APPLIED, STATUS_FAILED, STATUS_SKIPPED, WAITING, INTERRUPTED)
EVERY_ROLLBACK_STATUS = (ROLLED_BACK, PARTLY_ROLLED_BACK, ROLLBACK_FAILED, NOT_ROLLED_BACK)


def shard_result(name: str, status: str, **fields) -> ShardResult:
    result = ShardResult(
        shard_id=f"prod/{name}/s3", account="prod", account_id="333333333333", region="eu-west-1", service="s3",
        project=name, state_key=f"s3/333333333333/eu-west-1/{name}/terraform.tfstate", deployment_file=f"Accounts/prod/{name}.tfvars",
        status=status,
    )
    for key, value in fields.items():
        setattr(result, key, value)
    return result


def passed_policy() -> dict:
    return PolicyVerdict(opa_rules=9, checkov_passed=20).as_dict()


def failed_policy() -> dict:
    return PolicyVerdict(failures=["main.deny: bucket open has public access"], warnings=["checkov CKV_AWS_18 (soft fail)"], opa_rules=9, checkov_passed=19, checkov_failed=1, checkov_soft_failed=1).as_dict()


def rollback(status: str) -> dict:
    outcome = RollbackOutcome(status, target="the configuration applied by run 20261203T000000Z-aaaaaa (git 1234abc)", backup_id="20261204T000012345678Z-20261204T000000Z-abc123-pre-apply")
    if status != NOT_ROLLED_BACK:
        outcome.created_by_failed_apply = ['aws_s3_bucket.this["new"]']
        outcome.planned = [{"address": 'aws_s3_bucket.this["new"]', "actions": ["delete"]}, {"address": 'aws_s3_bucket.this["old"]', "actions": ["delete", "create"]}]
    if status in (PARTLY_ROLLED_BACK, ROLLBACK_FAILED):
        outcome.not_converged = [{"address": 'aws_s3_bucket.this["new"]', "actions": ["delete"]}]
        outcome.error = "Error: deleting S3 Bucket (new): BucketNotEmpty"
    if status == NOT_ROLLED_BACK:
        outcome.target = "-"
        outcome.backup_id = None
        outcome.error = "the state of the failed apply is not saved in the bucket yet"
    return outcome.as_dict()


def every_kind_of_result() -> list[ShardResult]:
    """One result per shard status, plus applies with each rollback outcome, with and without policy."""
    results = []
    for status in EVERY_STATUS:
        results.append(shard_result(status.replace(" ", "-"), status))
    results[1].counts = ChangeCounts(add=3, change=1, destroy=1, replace=1, importing=1, move=1, forget=1)
    results[1].has_changes = True
    results[1].policy = passed_policy()
    results[1].plan_file = "/work/.orchestrator/runs/x/shards/prod/planned/s3/plan.tfplan"
    results[1].commands = [{"command": "terraform plan", "exit_code": 2, "duration": 4.5}, {"command": "terraform show", "exit_code": 0, "duration": 1.25}]
    results[2].used_saved_plan = True
    results[2].backup_id = "20261204T000012345678Z-20261204T000000Z-abc123-pre-apply"
    results[3].policy = failed_policy()
    results[3].error = "policy: main.deny: bucket open has public access"
    results[5].notes = ["re-plan after prod/payments/kms applies: this plan needs what that shard will create"]
    results[6].commands = [{"command": "terraform apply", "exit_code": -2, "duration": 30.0}]

    for index, status in enumerate(EVERY_ROLLBACK_STATUS):
        result = shard_result(f"rollback-{index}", STATUS_FAILED, has_changes=True, counts=ChangeCounts(add=1), backup_id="20261204T000012345678Z-20261204T000000Z-abc123-pre-apply")
        result.rollback = rollback(status)
        result.policy = passed_policy() if index % 2 else {}
        result.error = "prod/x/s3: terraform apply failed"
        results.append(result)
    return results


def full_report() -> RunReport:
    report = RunReport(
        run_id="20261204T000000Z-abc123", action="apply", selection="--all", started_at="2026-12-04T00:00:00+00:00",
        duration=61.237, terraform="terraform 1.11.4", sandbox_endpoint="http://127.0.0.1:4566",
    )
    report.results = every_kind_of_result()
    return report


def report_data() -> dict:
    return json.loads(json.dumps(full_report().as_dict()))


def test_schema_is_valid_draft_2020_12():
    jsonschema.Draft202012Validator.check_schema(load_schema("report.schema.json"))


def test_full_report_validates():
    validate_report(report_data())


def test_plan_report_without_shards_validates():
    report = RunReport(run_id="20261204T000000Z-abc123", action="plan", selection="--changed-files x.tf", started_at="2026-12-04T00:00:00+00:00")
    validate_report(report.as_dict())


def test_schema_names_every_field():
    schema = load_schema("report.schema.json")
    shard_fields = {field.name for field in dataclasses.fields(ShardResult)}
    assert set(schema["$defs"]["shard"]["properties"]) == shard_fields
    assert set(schema["$defs"]["shard"]["required"]) == shard_fields
    assert set(schema["properties"]) == set(full_report().as_dict())
    assert set(schema["$defs"]["counts"]["properties"]) == {field.name for field in dataclasses.fields(ChangeCounts)}
    assert set(schema["$defs"]["rollback"]["properties"]) == {field.name for field in dataclasses.fields(RollbackOutcome)}
    assert set(schema["$defs"]["policy"]["properties"]) == set(PolicyVerdict().as_dict())


def test_schema_enums_match_the_code():
    schema = load_schema("report.schema.json")
    assert set(schema["$defs"]["shard_status"]["enum"]) == set(EVERY_STATUS)
    assert set(schema["$defs"]["rollback"]["properties"]["status"]["enum"]) == set(EVERY_ROLLBACK_STATUS)
    assert set(schema["properties"]["action"]["enum"]) == {"plan", "apply"}


@pytest.mark.parametrize("path", sorted(REPORTS.glob("*.json")), ids=lambda path: path.name)
def test_fixture_reports_validate(path):
    validate_report(json.loads(path.read_text(encoding="utf-8")))


# Each case: a name, a change to a valid report, and the line the error message must contain.
MUTATIONS = [
    ("missing top-level field", lambda d: d.pop("run_id"), "$.run_id: missing"),
    ("missing shard field", lambda d: d["shards"][0].pop("status"), "$.shards[0].status: missing"),
    ("missing count", lambda d: d["shards"][1]["counts"].pop("forget"), "$.shards[1].counts.forget: missing"),
    ("wrong action", lambda d: d.update(action="destroy"), "$.action: 'destroy' is not one of ['plan', 'apply']"),
    ("wrong shard status", lambda d: d["shards"][2].update(status="done"), "$.shards[2].status: 'done' is not one of"),
    ("wrong rollback status", lambda d: d["shards"][8]["rollback"].update(status="undone"), "$.shards[8].rollback.status: 'undone' is not one of"),
    ("wrong policy status", lambda d: d["shards"][1]["policy"].update(status="ok"), "$.shards[1].policy.status: 'ok' is not one of"),
    ("count as text", lambda d: d["shards"][1]["counts"].update(add="3"), "$.shards[1].counts.add: '3' is not of type 'integer'"),
    ("negative count", lambda d: d["shards"][1]["counts"].update(destroy=-1), "$.shards[1].counts.destroy: -1 is less than the minimum of 0"),
    ("boolean as text", lambda d: d.update(interrupted="no"), "$.interrupted: 'no' is not of type 'boolean'"),
    ("notes as text", lambda d: d["shards"][5].update(notes="re-plan"), "$.shards[5].notes: 're-plan' is not of type 'array'"),
    ("exit code as text", lambda d: d["shards"][1]["commands"][0].update(exit_code="2"), "$.shards[1].commands[0].exit_code: '2' is not of type 'integer'"),
    ("unknown exit code", lambda d: d.update(exit_code=3), "$.exit_code: 3 is not one of [0, 1, 130]"),
    ("extra top-level key", lambda d: d.update(schema_version=1), "$.schema_version: unknown property"),
    ("extra shard key", lambda d: d["shards"][0].update(colour="red"), "$.shards[0].colour: unknown property"),
    ("extra rollback key", lambda d: d["shards"][7]["rollback"].update(extra=[]), "$.shards[7].rollback.extra: unknown property"),
    ("extra command key", lambda d: d["shards"][1]["commands"][1].update(argv=["terraform"]), "$.shards[1].commands[1].argv: unknown property"),
    ("policy without checkov", lambda d: d["shards"][1]["policy"].pop("checkov"), "$.shards[1].policy.checkov: missing"),
    ("rollback without target", lambda d: d["shards"][9]["rollback"].pop("target"), "$.shards[9].rollback.target: missing"),
    ("planned change without actions", lambda d: d["shards"][8]["rollback"]["planned"][0].pop("actions"), "$.shards[8].rollback.planned[0].actions: missing"),
    ("unknown status in totals", lambda d: d["totals"].update(done=1), "$.totals: 'done' is not one of"),
    ("zero in totals", lambda d: d["totals"].update({"no changes": 0}), "$.totals['no changes']: 0 is less than the minimum of 1"),
    ("empty report", lambda d: d.clear(), "$.run_id: missing"),
]


@pytest.mark.parametrize(("mutate", "expected"), [(mutate, expected) for _, mutate, expected in MUTATIONS], ids=[name for name, _, _ in MUTATIONS])
def test_mutated_report_fails_with_path(mutate, expected):
    data = report_data()
    mutate(data)

    with pytest.raises(ValueError) as raised:
        validate_report(data)

    assert expected in str(raised.value)


def test_mutations_target_intended_shards():
    data = report_data()
    assert data["shards"][1]["status"] == PLANNED
    assert data["shards"][5]["status"] == WAITING
    assert data["shards"][7]["rollback"]["status"] == ROLLED_BACK
    assert data["shards"][8]["rollback"]["status"] == PARTLY_ROLLED_BACK
    assert data["shards"][9]["rollback"]["status"] == ROLLBACK_FAILED


def test_problems_listed_in_path_order():
    data = report_data()
    data["shards"][10]["status"] = "gone"
    data["shards"][2]["counts"]["add"] = 1.5
    data.pop("selection")

    problems = report_problems(data)

    assert problems == [
        "$.selection: missing",
        "$.shards[2].counts.add: 1.5 is not of type 'integer'",
        "$.shards[10].status: 'gone' is not one of ['no changes', 'planned', 'applied', 'failed', 'skipped', 'waiting', 'interrupted']",
    ]


def test_missing_keys_listed_once_each():
    data = report_data()
    del data["shards"][0]["error"], data["shards"][0]["notes"]

    assert report_problems(data) == ["$.shards[0].error: missing", "$.shards[0].notes: missing"]


def test_non_object_report_fails():
    with pytest.raises(ValueError, match=r"\$: \[\] is not of type 'object'"):
        validate_report([])


@pytest.mark.parametrize(
    ("parts", "expected"),
    [([], "$"), (["shards", 0, "counts", "add"], "$.shards[0].counts.add"), (["totals", "no changes"], "$.totals['no changes']")],
)
def test_json_path_format(parts, expected):
    assert json_path(parts) == expected


def test_write_report_writes_valid_report(tmp_path):
    path = tmp_path / "out" / "report.json"

    write_report(full_report(), path)

    written = json.loads(path.read_text(encoding="utf-8"))
    validate_report(written)
    assert len(written["shards"]) == len(EVERY_STATUS) + len(EVERY_ROLLBACK_STATUS)


def test_write_report_rejects_invalid_report(tmp_path):
    report = full_report()
    report.results[0].status = "AKIAIOSFODNN7EXAMPLE"
    path = tmp_path / "report.json"

    with pytest.raises(ValueError) as raised:
        write_report(report, path)

    message = str(raised.value)
    assert "$.shards[0].status" in message
    assert "AKIAIOSFODNN7EXAMPLE" not in message  # rejected values are redacted like the report
    assert not path.exists()


def test_null_counts_is_one_problem():
    data = report_data()
    broken = copy.deepcopy(data)
    broken["shards"][0]["counts"] = None

    assert report_problems(broken) == ["$.shards[0].counts: None is not of type 'object'"]
    assert report_problems(data) == []
