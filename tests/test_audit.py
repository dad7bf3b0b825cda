"""The audit trail: key layout, records, dates and actors, and writes and queries against the sandbox.

The sandbox tests share one moto server on 127.0.0.1 (no Terraform). Each test writes into
days of its own, so that the queries of one test never see the records of another.
"""

from __future__ import annotations

import getpass
import io
import json
import re
import stat
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest

from orchestrator import audit, sandbox
from orchestrator.audit import (
    AuditError,
    AuditNotWritten,
    AuditRecord,
    AuditTrail,
    audit_key,
    audit_main,
    audit_s3_client,
    current_actor,
    format_records,
    git_revision,
    parse_date_range,
    query,
    redacted_dict,
)
from orchestrator.credentials import AwsTarget, aws_client, base_credentials
from orchestrator.errors import ConfigurationError
from orchestrator.redaction import MASK, WITHHELD, Redactor
from orchestrator.settings import load_settings

from conftest import copy_template, free_port, git, write_settings

SECRET = "AKIAIOSFODNN7EXAMPLE"
OUTPUT = f"aws_ssm_parameter.ci: Creating...\n  value = \"{SECRET}\"\nApply complete! Resources: 1 added, 0 changed, 0 destroyed."
KEY_PATTERN = re.compile(r"^audit/year=\d{4}/month=\d{2}/day=\d{2}/[A-Za-z0-9._-]+\.jsonl$")


def make_record(**overrides) -> AuditRecord:
    values = {
        "timestamp": "2031-01-01T10:00:00.000Z",
        "actor": "dev@example.invalid",
        "run_id": "20310101T100000Z-abc123",
        "action": "apply",
        "result": "applied",
        "shard": "prod/payments/s3",
        "account": "prod",
        "account_id": "222222222222",
        "region": "eu-west-1",
        "service": "s3",
        "project": "payments",
        "git_revision": "0" * 40,
        "durations": {"total": 12.3, "commands": [{"command": "terraform apply", "seconds": 7.1, "exit_code": 0}]},
        "output": OUTPUT,
        "details": {},
    }
    values.update(overrides)
    return AuditRecord(**values)


def at(day: date, hour: int = 10) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=timezone.utc)


# Pure functions: no sandbox.


@pytest.mark.parametrize("when, part, expected", [
    (datetime(2026, 12, 4, 10, 0, tzinfo=timezone.utc), "", "audit/year=2026/month=12/day=04/run-1.jsonl"),
    (datetime(2026, 1, 5, 23, 30, tzinfo=timezone(timedelta(hours=-2))), "", "audit/year=2026/month=01/day=06/run-1.jsonl"),
    (datetime(2026, 3, 9, 1, 0), "apply.0a1b", "audit/year=2026/month=03/day=09/run-1.apply.0a1b.jsonl"),
])
def test_audit_key_partitions_by_utc_day(when, part, expected):
    assert audit_key("run-1", when, part=part) == expected


@pytest.mark.parametrize("run_id", ["", "../escape", "a/b", ".hidden", "with space"])
def test_audit_key_rejects_unsafe_run_id(run_id):
    with pytest.raises(ValueError, match="cannot be used in an audit key"):
        audit_key(run_id, datetime(2026, 12, 4, tzinfo=timezone.utc))


def test_record_json_line_round_trip():
    record = make_record(output="line one\nline two\u2028still two", details={"path": Path("/x"), "attempt": 2})

    line = record.as_json_line()
    parsed = json.loads(line)

    assert "\n" not in line
    assert "\u2028" not in line
    assert parsed["output"] == "line one\nline two\u2028still two"
    assert parsed["details"] == {"path": "/x", "attempt": 2}
    assert AuditRecord.from_dict(parsed) == make_record(output=record.output, details={"path": "/x", "attempt": 2})


def test_record_from_dict_tolerates_missing_and_unknown_keys():
    record = AuditRecord.from_dict({"action": "unlock", "account_id": 222222222222, "durations": [1], "added_later": True})

    assert record.action == "unlock"
    assert record.result == ""
    assert record.account_id == "222222222222"
    assert record.durations == {}
    assert record.total_seconds is None


def test_record_timestamp_defaults_to_utc_now():
    before = datetime.now(timezone.utc)
    record = AuditRecord(action="plan", result="no changes")
    stamped = datetime.fromisoformat(record.timestamp)

    assert record.timestamp.endswith("Z")
    assert before - timedelta(seconds=1) <= stamped <= datetime.now(timezone.utc)


def test_date_range_defaults_to_last_seven_days():
    assert parse_date_range(None, None, today=date(2026, 12, 4)) == (date(2026, 11, 27), date(2026, 12, 4))
    assert parse_date_range(None, "2026-12-02") == (date(2026, 11, 25), date(2026, 12, 2))
    assert parse_date_range("2026-12-01", "2026-12-04") == (date(2026, 12, 1), date(2026, 12, 4))


@pytest.mark.parametrize("flag", ["--since", "--until"])
@pytest.mark.parametrize("value", ["2026-13-01", "2026-02-30", "04.12.2026", "20261204", "yesterday", ""])
def test_date_range_rejects_invalid_date(flag, value):
    since, until = ("2026-12-01", "2026-12-04")
    if flag == "--since":
        since = value
    else:
        until = value

    with pytest.raises(ConfigurationError) as caught:
        parse_date_range(since, until)

    assert f"{flag} {value!r} is not a valid date" in str(caught.value)
    assert "YYYY-MM-DD" in str(caught.value)


def test_date_range_rejects_since_after_until():
    with pytest.raises(ConfigurationError, match=r"2026-12-05 \(--since\) is after the end date 2026-12-04 \(--until\)"):
        parse_date_range("2026-12-05", "2026-12-04")


def test_date_range_rejects_decades():
    with pytest.raises(ConfigurationError, match="narrow the range"):
        parse_date_range("1990-01-01", "2026-12-04")


def test_current_actor_prefers_github_actor(monkeypatch, tmp_path):
    monkeypatch.setenv("GITHUB_ACTOR", "octocat")
    assert current_actor(tmp_path) == "github:octocat"


def test_current_actor_uses_git_email(monkeypatch, tmp_path):
    monkeypatch.delenv("GITHUB_ACTOR", raising=False)
    git(tmp_path, "init", "-q")
    git(tmp_path, "config", "user.email", "dev@example.invalid")

    assert current_actor(tmp_path) == "dev@example.invalid"


def test_current_actor_falls_back_to_os_user(monkeypatch, tmp_path):
    monkeypatch.delenv("GITHUB_ACTOR", raising=False)
    # HOME is a fresh folder, and this hides /etc/gitconfig, so git has no user.email at all.
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")

    assert current_actor(tmp_path) == getpass.getuser()


def test_git_revision_clean_dirty_and_unknown(tmp_path):
    outside = tmp_path / "not-a-repo"
    outside.mkdir()
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "main.tf").write_text("# first\n")
    git(repo, "add", "main.tf")
    git(repo, "-c", "commit.gpgsign=false", "commit", "-q", "-m", "first")
    head = git(repo, "rev-parse", "HEAD").strip()

    assert git_revision(outside) == "unknown"
    assert git_revision(repo) == head
    (repo / "untracked.tf").write_text("# not tracked\n")
    assert git_revision(repo) == head
    (repo / "main.tf").write_text("# changed\n")
    assert git_revision(repo) == head + "+dirty"


def test_format_records_redacts_shown_output():
    text = format_records([make_record()], show_output=True, redactor=Redactor())

    assert SECRET not in text
    assert MASK in text
    assert "Apply complete! Resources: 1 added" in text
    assert "prod/payments/s3" in text
    assert "12.3" in text


def test_format_records_omits_output_by_default():
    text = format_records([make_record()], show_output=False, redactor=Redactor())

    assert "Apply complete" not in text
    assert SECRET not in text
    for header in ("timestamp", "action", "result", "shard", "actor", "run id", "seconds"):
        assert header in text


def test_redacted_dict_masks_values_under_secret_keys():
    record = make_record(details={"db_password": "hunter2-long", "note": f"key {SECRET}", "attempt": 2})

    redacted = redacted_dict(record, show_output=False, redactor=Redactor())

    assert "output" not in redacted
    assert redacted["details"] == {"db_password": MASK, "note": f"key {MASK}", "attempt": 2}
    assert redacted["durations"] == record.durations
    assert redacted["actor"] == "dev@example.invalid"


def test_redacted_dict_withholds_on_redaction_failure(monkeypatch):
    redactor = Redactor()
    # Forces the failure branch: Redactor.structure returns WITHHELD when its own redaction raises.
    monkeypatch.setattr(redactor, "structure", lambda value: WITHHELD)

    assert redacted_dict(make_record(), show_output=True, redactor=redactor) == {"run_id": "20310101T100000Z-abc123", "redaction": WITHHELD}


# Against the sandbox.


@pytest.fixture(scope="module")
def sandbox_settings(tmp_path_factory):
    repo = copy_template(tmp_path_factory.mktemp("audit") / "repo")
    write_settings(repo, f"[sandbox]\nport = {free_port()}")
    settings = load_settings(repo)
    sandbox.up(settings)
    yield settings
    sandbox.down(settings)


@pytest.fixture
def s3(sandbox_settings):
    return audit_s3_client(sandbox_settings, AwsTarget(endpoint=sandbox_settings.sandbox.endpoint))


def settings_beside(sandbox_settings, folder: Path, extra: str = ""):
    """Settings of another repository that uses the same sandbox, so its spool folder is its own."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "orchestrator.toml").write_text(f"[sandbox]\nport = {sandbox_settings.sandbox.port}\n{extra}\n")
    return load_settings(folder)


def read_object(s3, settings, key: str) -> str:
    return s3.get_object(Bucket=settings.audit.bucket, Key=key)["Body"].read().decode("utf-8")


def test_audit_bucket_has_encryption_and_lifecycle(sandbox_settings, s3):
    bucket = sandbox_settings.audit.bucket
    # up() ran once in the fixture; a second bootstrap must leave the same configuration.
    sandbox.bootstrap(sandbox_settings)

    rules = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    lifecycle = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]

    assert [rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] for rule in rules] == ["AES256"]
    assert len(lifecycle) == 1
    assert lifecycle[0]["Status"] == "Enabled"
    assert lifecycle[0]["Expiration"]["Days"] == 90


def test_write_puts_encrypted_partitioned_object(sandbox_settings, s3):
    day = date(2031, 2, 3)
    records = [make_record(timestamp="2031-02-03T08:00:00.000Z", action="plan", result="changes"), make_record(timestamp="2031-02-03T08:01:00.000Z")]

    key = AuditTrail(sandbox_settings, s3).write("20310203T080000Z-abc123", records)
    head = s3.head_object(Bucket=sandbox_settings.audit.bucket, Key=key)
    lines = read_object(s3, sandbox_settings, key).splitlines()

    assert KEY_PATTERN.match(key), key
    assert key.startswith("audit/year=2031/month=02/day=03/20310203T080000Z-abc123.plan_apply.")
    assert head["ServerSideEncryption"] == "AES256"
    assert head["ContentType"] == "application/x-ndjson"
    assert len(lines) == 2
    assert [json.loads(line)["action"] for line in lines] == ["plan", "apply"]
    assert json.loads(lines[1])["output"] == OUTPUT
    assert SECRET in lines[1]
    assert query(sandbox_settings, s3, day, day) == records


def test_write_encrypts_without_bucket_default(sandbox_settings, s3, tmp_path):
    # The sandbox's audit bucket encrypts by default, which would hide a put without encryption.
    bucket = "tdo-audit-without-default-encryption"
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": sandbox_settings.audit.region})
    settings = settings_beside(sandbox_settings, tmp_path / "plain-repo", f'[audit]\nbucket = "{bucket}"')

    key = AuditTrail(settings, s3).write("run-plain", [make_record(run_id="run-plain")], when=at(date(2031, 2, 5)))

    assert s3.head_object(Bucket=bucket, Key=key)["ServerSideEncryption"] == "AES256"


def test_write_twice_keeps_both_objects(sandbox_settings, s3):
    day = date(2031, 2, 10)
    trail = AuditTrail(sandbox_settings, s3)

    first = trail.write("run-twice", [make_record(run_id="run-twice", action="apply", result="failed")], when=at(day))
    second = trail.write("run-twice", [make_record(run_id="run-twice", action="apply", result="failed")], when=at(day))

    assert first != second
    assert len(query(sandbox_settings, s3, day, day)) == 2


def test_write_uses_kms_key_when_configured(sandbox_settings, s3, tmp_path):
    target = AwsTarget(endpoint=sandbox_settings.sandbox.endpoint)
    kms = aws_client("kms", base_credentials(target), sandbox_settings.audit.region, target)
    key_id = kms.create_key(Description="audit test key")["KeyMetadata"]["KeyId"]
    settings = settings_beside(sandbox_settings, tmp_path / "kms-repo", f'[audit]\nkms_key_id = "{key_id}"')

    key = AuditTrail(settings, s3).write("run-kms", [make_record(run_id="run-kms")], when=at(date(2031, 2, 20)))
    head = s3.head_object(Bucket=settings.audit.bucket, Key=key)

    assert head["ServerSideEncryption"] == "aws:kms"
    assert key_id in head["SSEKMSKeyId"]


def test_query_filters_by_each_flag(sandbox_settings, s3):
    first_day, second_day = date(2031, 3, 1), date(2031, 3, 3)
    trail = AuditTrail(sandbox_settings, s3)
    applied = make_record(timestamp="2031-03-01T09:00:00.000Z", run_id="run-a", result="applied")
    failed = make_record(timestamp="2031-03-03T11:00:00.000Z", run_id="run-b", result="Failed", shard="prod/payments/kms", service="kms")
    rolled_back = make_record(timestamp="2031-03-03T11:05:00.000Z", run_id="run-b", action="rollback", result="rolled back", shard="prod/payments/kms", service="kms")
    staging = make_record(timestamp="2031-03-03T10:00:00.000Z", run_id="run-c", action="plan", result="no changes", shard="staging/web/s3", account="staging", account_id="333333333333")
    trail.write("run-a", [applied])
    trail.write("run-b", [failed, rolled_back])
    trail.write("run-c", [staging])

    def matching(**filters) -> list[AuditRecord]:
        return query(sandbox_settings, s3, first_day, second_day, **filters)

    assert query(sandbox_settings, s3, first_day, first_day) == [applied]
    assert query(sandbox_settings, s3, first_day + timedelta(days=1), second_day) == [staging, failed, rolled_back]
    assert matching() == [applied, staging, failed, rolled_back]
    assert matching(account="staging") == [staging]
    assert matching(account="222222222222") == [applied, failed, rolled_back]
    assert matching(result="failed") == [failed]
    assert matching(result="fail") == []
    assert matching(action="ROLLBACK") == [rolled_back]
    assert matching(shard="prod/payments") == [applied, failed, rolled_back]
    assert matching(shard="prod/payments/kms", action="apply") == [failed]
    assert matching(shard="prod/pay") == []


def test_query_reads_every_page(sandbox_settings, s3, monkeypatch):
    day = date(2031, 4, 10)
    trail = AuditTrail(sandbox_settings, s3)
    for number in range(3):
        trail.write(f"run-page-{number}", [make_record(run_id=f"run-page-{number}")], when=at(day, hour=number))
    monkeypatch.setattr(audit, "_LIST_PAGE_SIZE", 1)

    assert sorted(record.run_id for record in query(sandbox_settings, s3, day, day)) == ["run-page-0", "run-page-1", "run-page-2"]


def test_query_skips_invalid_lines(sandbox_settings, s3, caplog):
    day = date(2031, 4, 20)
    key = audit_key("run-broken", at(day))
    body = make_record(run_id="run-broken").as_json_line() + "\nnot json\n[1, 2]\n"
    s3.put_object(Bucket=sandbox_settings.audit.bucket, Key=key, Body=body.encode(), ServerSideEncryption="AES256")

    records = query(sandbox_settings, s3, day, day)

    assert [record.run_id for record in records] == ["run-broken"]
    assert f"skipped line 2 of s3://{sandbox_settings.audit.bucket}/{key}" in caplog.text
    assert "skipped line 3" in caplog.text


def test_query_names_missing_bucket(sandbox_settings, s3, tmp_path):
    settings = settings_beside(sandbox_settings, tmp_path / "other-repo", '[audit]\nbucket = "tdo-audit-bucket-that-does-not-exist"')

    with pytest.raises(AuditError, match="the audit bucket tdo-audit-bucket-that-does-not-exist does not exist in eu-west-1"):
        query(settings, s3, date(2031, 1, 1), date(2031, 1, 1))


def test_failed_put_spools_then_flushes(sandbox_settings, s3, tmp_path, caplog):
    settings = settings_beside(sandbox_settings, tmp_path / "spool-repo")
    # Nothing listens on this port, so every request to it is refused at once.
    closed = AwsTarget(endpoint=f"http://127.0.0.1:{free_port()}")
    unreachable = aws_client("s3", base_credentials(closed), settings.audit.region, closed)
    record = make_record(run_id="run-spool", timestamp="2031-05-20T10:00:00.000Z")

    with pytest.raises(AuditNotWritten) as caught:
        AuditTrail(settings, unreachable).write("run-spool", [record])

    spooled = caught.value.spool_path
    message = str(caught.value)
    assert spooled is not None
    assert settings.audit.bucket in message
    assert str(spooled) in message
    assert "Could not connect" in message
    assert spooled.parent == settings.work_dir / "audit-pending"
    assert stat.S_IMODE(spooled.stat().st_mode) == 0o600
    assert stat.S_IMODE(spooled.parent.stat().st_mode) == 0o700
    assert json.loads(spooled.read_text()) == json.loads(record.as_json_line())
    assert AuditTrail(settings, unreachable).flush_pending() == 0
    assert spooled.exists()

    audit_main(settings, AwsTarget(endpoint=settings.sandbox.endpoint), since="2031-05-20", until="2031-05-20", stream=io.StringIO())
    assert "1 object(s) in" in caplog.text
    assert "are not uploaded yet" in caplog.text

    trail = AuditTrail(settings, s3)
    assert trail.pending_keys() == [caught.value.key]
    assert trail.flush_pending() == 1
    assert not spooled.exists()
    assert trail.pending_keys() == []
    assert s3.head_object(Bucket=settings.audit.bucket, Key=caught.value.key)["ServerSideEncryption"] == "AES256"
    assert query(settings, s3, date(2031, 5, 20), date(2031, 5, 20)) == [record]


def test_successful_write_uploads_spooled_objects(sandbox_settings, s3, tmp_path):
    settings = settings_beside(sandbox_settings, tmp_path / "backlog-repo")
    closed = AwsTarget(endpoint=f"http://127.0.0.1:{free_port()}")
    unreachable = aws_client("s3", base_credentials(closed), settings.audit.region, closed)
    day = date(2031, 5, 25)
    with pytest.raises(AuditNotWritten) as caught:
        AuditTrail(settings, unreachable).write("run-backlog", [make_record(run_id="run-backlog", action="plan")], when=at(day))

    trail = AuditTrail(settings, s3)
    key = trail.write("run-backlog", [make_record(run_id="run-backlog")], when=at(day))

    assert trail.pending_keys() == []
    assert not caught.value.spool_path.exists()
    assert sorted(record.action for record in query(settings, s3, day, day)) == ["apply", "plan"]
    assert key != caught.value.key


def test_audit_main_prints_redacted_table(sandbox_settings, s3):
    day = date(2031, 6, 2)
    AuditTrail(sandbox_settings, s3).write("run-main", [make_record(run_id="run-main", timestamp="2031-06-02T12:00:00.000Z", result="failed")])
    AuditTrail(sandbox_settings, s3).write("run-other", [make_record(run_id="run-other", timestamp="2031-06-02T13:00:00.000Z", account="staging", account_id="333333333333")])
    target = AwsTarget(endpoint=sandbox_settings.sandbox.endpoint)
    table, with_output, empty = io.StringIO(), io.StringIO(), io.StringIO()

    assert audit_main(sandbox_settings, target, since="2031-06-01", until="2031-06-03", account="prod", stream=table) == 0
    assert audit_main(sandbox_settings, target, since=day, until=day, result="FAILED", show_output=True, stream=with_output) == 0
    assert audit_main(sandbox_settings, target, since=day, until=day, action="unlock", stream=empty) == 0

    assert "run-main" in table.getvalue()
    assert "run-other" not in table.getvalue()
    assert "Apply complete" not in table.getvalue()
    assert "Apply complete" in with_output.getvalue()
    assert SECRET not in with_output.getvalue()
    assert MASK in with_output.getvalue()
    assert empty.getvalue() == f"No audit record from {day} to {day} matches action unlock in bucket {sandbox_settings.audit.bucket}.\n"


def test_audit_main_prints_json_lines(sandbox_settings, s3):
    AuditTrail(sandbox_settings, s3).write("run-json", [make_record(run_id="run-json", timestamp="2031-06-10T12:00:00.000Z")])
    target = AwsTarget(endpoint=sandbox_settings.sandbox.endpoint)
    plain, with_output = io.StringIO(), io.StringIO()

    audit_main(sandbox_settings, target, since="2031-06-10", until="2031-06-10", as_json=True, stream=plain)
    audit_main(sandbox_settings, target, since="2031-06-10", until="2031-06-10", as_json=True, show_output=True, stream=with_output)
    [printed] = [json.loads(line) for line in plain.getvalue().splitlines()]
    [printed_with_output] = [json.loads(line) for line in with_output.getvalue().splitlines()]

    assert printed["run_id"] == "run-json"
    assert "output" not in printed
    assert printed_with_output["output"] == OUTPUT.replace(SECRET, MASK)


@pytest.mark.parametrize("arguments, message", [
    ({"since": "2031-6-1"}, "--since '2031-6-1' is not a valid date; expected YYYY-MM-DD"),
    ({"until": "tomorrow"}, "--until 'tomorrow' is not a valid date; expected YYYY-MM-DD"),
    ({"since": "2031-06-05", "until": "2031-06-01"}, "is after the end date"),
    ({"action": "destroy"}, "--action 'destroy' is not an audited action"),
])
def test_audit_main_rejects_invalid_flags(tmp_path, arguments, message):
    # An endpoint where nothing listens: the flags must be rejected before any request.
    settings = load_settings(tmp_path)
    target = AwsTarget(endpoint=f"http://127.0.0.1:{free_port()}")

    with pytest.raises(ConfigurationError) as caught:
        audit_main(settings, target, stream=io.StringIO(), **arguments)

    assert message in str(caught.value)
