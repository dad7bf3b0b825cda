"""The audit trail: encrypted JSON-lines objects in the audit bucket, and the query that reads them.

Every plan, apply, rollback, state restore and unlock writes audit records that contain the
full, unredacted Terraform output. So each object is encrypted at rest (SSE-S3, or SSE-KMS
when ``audit.kms_key_id`` is set), and people only ever see the redacted form that
``format_records`` prints.

Key layout, with Hive-style date partitions so that Athena reads only the requested days::

    audit/year=2026/month=12/day=04/<run id>.<actions>.<8 hex digits>.jsonl

The random part keeps each write of a run in its own object, so no write replaces another.
An object that cannot be uploaded waits in ``<work dir>/audit-pending/`` (mode 0600). The
next successful write, or a call of ``AuditTrail.flush_pending``, uploads it.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import re
import secrets
import subprocess
import sys
from dataclasses import asdict, dataclass, field, fields
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import NoReturn, TextIO
from urllib.parse import quote, unquote

from botocore.exceptions import BotoCoreError, ClientError
from tabulate import tabulate

from .credentials import AwsTarget, assume_role, aws_client, base_credentials, role_session_name
from .errors import ConfigurationError, OrchestratorError
from .redaction import Redactor
from .settings import Settings

logger = logging.getLogger(__name__)

ACTIONS = ("plan", "apply", "rollback", "restore-state", "unlock")
AUDIT_PREFIX = "audit"
CONTENT_TYPE = "application/x-ndjson"
PENDING_DIR_NAME = "audit-pending"
DEFAULT_QUERY_DAYS = 7
# A query sends at least one ListObjectsV2 request per day, so a mistyped year must not start
# hundreds of thousands of them. Ten years is far beyond the 90-day retention.
MAX_QUERY_DAYS = 3660
TABLE_HEADERS = ("timestamp", "action", "result", "shard", "actor", "run id", "seconds")

_LIST_PAGE_SIZE = 1000
_KEY_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_PARTIAL_SUFFIX = ".partial"
_GIT_TIMEOUT_SECONDS = 10


class AuditError(OrchestratorError):
    """The audit bucket could not be written or read."""


class AuditNotWritten(AuditError):
    """An audit object was not uploaded. ``spool_path`` is its local copy, or None when that failed too."""

    def __init__(self, message: str, key: str, spool_path: Path | None):
        super().__init__(message)
        self.key = key
        self.spool_path = spool_path


def utc_timestamp(moment: datetime | None = None) -> str:
    """Format ``moment`` (default: now) as ISO 8601 in UTC with milliseconds and a ``Z`` suffix."""
    moment = _as_utc(moment or datetime.now(timezone.utc))
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(kw_only=True)
class AuditRecord:
    """One audited action: on one shard, or on the whole run when ``shard`` is empty.

    ``durations`` contains seconds, for example ``{"total": 12.3, "commands": [{"command":
    "terraform plan", "seconds": 7.1, "exit_code": 0}]}``. ``output`` is the unredacted
    Terraform output and ``details`` contains any further facts as JSON-compatible values.
    """

    timestamp: str = field(default_factory=utc_timestamp)
    actor: str = ""
    run_id: str = ""
    action: str
    result: str
    shard: str = ""
    account: str = ""
    account_id: str = ""
    region: str = ""
    service: str = ""
    project: str = ""
    git_revision: str = ""
    durations: dict = field(default_factory=dict)
    output: str = ""
    details: dict = field(default_factory=dict)

    def as_json_line(self) -> str:
        """Serialize the record as one line of JSON, without the line break."""
        # json.dumps escapes line breaks inside strings, and ensure_ascii also escapes U+2028,
        # so the text never contains a character that a line reader splits on.
        return json.dumps(asdict(self), ensure_ascii=True, separators=(",", ":"), default=str)

    @classmethod
    def from_dict(cls, data: dict) -> "AuditRecord":
        """Build a record from a parsed JSON line, ignoring unknown keys and filling missing ones with defaults."""
        values: dict = {}
        for record_field in fields(cls):
            if record_field.name not in data:
                continue
            value = data[record_field.name]
            if record_field.name in ("durations", "details"):
                values[record_field.name] = value if isinstance(value, dict) else {}
            else:
                values[record_field.name] = "" if value is None else str(value)
        values.setdefault("action", "")
        values.setdefault("result", "")
        return cls(**values)

    @property
    def total_seconds(self) -> float | None:
        """Total duration in seconds, or None when the record has none."""
        total = self.durations.get("total")
        return float(total) if isinstance(total, (int, float)) and not isinstance(total, bool) else None


def _git(repo_root: Path, *args: str) -> str | None:
    """Run git in ``repo_root`` and return its stripped output, or None when git fails or is missing."""
    try:
        completed = subprocess.run(
            ["git", *args],
            cwd=repo_root,
            capture_output=True,
            text=True,
            timeout=_GIT_TIMEOUT_SECONDS,
            env={**os.environ, "GIT_PAGER": "cat"},
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if completed.returncode != 0:
        return None
    return completed.stdout.strip()


def current_actor(repo_root: Path | None = None) -> str:
    """Return who acts: ``github:<GITHUB_ACTOR>`` in GitHub Actions, else git's user.email, else the OS user."""
    github_actor = os.environ.get("GITHUB_ACTOR", "").strip()
    if github_actor:
        return f"github:{github_actor}"

    email = _git(repo_root or Path.cwd(), "config", "user.email")
    if email:
        return email

    try:
        return getpass.getuser()
    except (OSError, KeyError):
        # getpass finds no name when the user id has no passwd entry (some containers).
        return "unknown"


def git_revision(repo_root: Path) -> str:
    """Return the commit checked out in ``repo_root``, with ``+dirty`` when tracked files have changes.

    Returns ``unknown`` outside a git repository or when git is not installed.
    """
    revision = _git(repo_root, "rev-parse", "--verify", "HEAD")
    if not revision:
        return "unknown"
    changes = _git(repo_root, "status", "--porcelain", "--untracked-files=no")
    return revision + "+dirty" if changes else revision


def _as_utc(moment: datetime) -> datetime:
    """Convert ``moment`` to UTC. A naive datetime counts as UTC already."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def partition_prefix(day: date, prefix: str = AUDIT_PREFIX) -> str:
    """Return the key prefix of one day's partition, for example ``audit/year=2026/month=12/day=04/``."""
    return f"{prefix}/year={day.year:04d}/month={day.month:02d}/day={day.day:02d}/"


def audit_key(run_id: str, when: datetime, prefix: str = AUDIT_PREFIX, part: str = "") -> str:
    """Return the object key of an audit write: the UTC day of ``when``, then ``<run_id>[.<part>].jsonl``."""
    if not _KEY_PART.match(run_id):
        raise ValueError(f"run id {run_id!r} cannot be used in an audit key; use letters, digits, '.', '_' and '-', starting with a letter or digit")
    if part and not _KEY_PART.match(part):
        raise ValueError(f"key part {part!r} cannot be used in an audit key; use letters, digits, '.', '_' and '-', starting with a letter or digit")
    name = f"{run_id}.{part}" if part else run_id
    return f"{partition_prefix(_as_utc(when).date(), prefix)}{name}.jsonl"


def _parse_timestamp(text: str) -> datetime | None:
    try:
        return _as_utc(datetime.fromisoformat(text))
    except (TypeError, ValueError):
        return None


class AuditTrail:
    """Writer of audit objects to ``settings.audit.bucket``, with a local spool for failed uploads."""

    def __init__(self, settings: Settings, s3_client):
        self.settings = settings
        self.s3 = s3_client
        self.bucket = settings.audit.bucket
        self.pending_dir = pending_dir(settings)

    def write(self, run_id: str, records: list[AuditRecord], when: datetime | None = None) -> str:
        """Upload ``records`` as one new JSON-lines object and return its key.

        The object lands in the partition of ``when``, by default the earliest record timestamp.
        After a successful upload, spooled objects are uploaded too. When the upload fails, the
        object is kept in the spool folder and AuditNotWritten is raised.
        """
        if not records:
            raise ValueError("write() needs at least one audit record")
        actions = list(dict.fromkeys(record.action for record in records))
        unknown = [action for action in actions if action not in ACTIONS]
        if unknown:
            raise ValueError(f"unknown audit action(s) {', '.join(map(repr, unknown))}; expected one of {', '.join(ACTIONS)}")

        if when is None:
            timestamps = [moment for moment in (_parse_timestamp(record.timestamp) for record in records) if moment]
            when = min(timestamps) if timestamps else datetime.now(timezone.utc)
        key = audit_key(run_id, when, part=f"{'_'.join(actions)}.{secrets.token_hex(4)}")
        body = "".join(record.as_json_line() + "\n" for record in records).encode("utf-8")

        try:
            self._put(key, body)
        except (BotoCoreError, ClientError) as error:
            self._keep_locally(key, body, error)
        logger.info("audit: wrote %d record(s) to s3://%s/%s", len(records), self.bucket, key)

        # The bucket has just accepted an upload, so older spooled objects most likely go through now.
        self.flush_pending()
        return key

    def flush_pending(self) -> int:
        """Upload the spooled objects, oldest key first, delete each after its upload, and return their count.

        Stops at the first failed upload and logs it, because the next one would most likely
        fail the same way. The rest stay in the spool folder for the next call.
        """
        paths = _pending_paths(self.pending_dir)
        uploaded = 0
        for path in paths:
            key = unquote(path.name)
            try:
                body = path.read_bytes()
            except FileNotFoundError:
                # Another process flushing the same folder uploaded and deleted it meanwhile.
                continue
            try:
                self._put(key, body)
            except (BotoCoreError, ClientError) as error:
                logger.warning(
                    "audit: could not upload %d spooled object(s) from %s to bucket %s: %s; they stay there for the next attempt",
                    len(paths) - uploaded, self.pending_dir, self.bucket, error,
                )
                break
            path.unlink(missing_ok=True)
            uploaded += 1
            logger.info("audit: uploaded spooled object s3://%s/%s", self.bucket, key)
        return uploaded

    def pending_keys(self) -> list[str]:
        """Return the keys of the objects that wait in the spool folder."""
        return [unquote(path.name) for path in _pending_paths(self.pending_dir)]

    def _put(self, key: str, body: bytes) -> None:
        arguments = {"Bucket": self.bucket, "Key": key, "Body": body, "ContentType": CONTENT_TYPE}
        kms_key_id = self.settings.audit.kms_key_id
        if kms_key_id:
            arguments.update(ServerSideEncryption="aws:kms", SSEKMSKeyId=kms_key_id)
        else:
            arguments.update(ServerSideEncryption="AES256")
        self.s3.put_object(**arguments)

    def _keep_locally(self, key: str, body: bytes, error: Exception) -> NoReturn:
        """Write the object that failed to upload to the spool folder, then raise AuditNotWritten."""
        where = f"bucket {self.bucket} ({self.settings.audit.region})"
        try:
            path = _write_spool_file(self.pending_dir, key, body)
        except OSError as spool_error:
            logger.error("audit: record lost: upload to %s failed (%s) and %s is not writable (%s)", where, error, self.pending_dir, spool_error)
            raise AuditNotWritten(
                f"could not write the audit object {key} to {where}: {error}; keeping it in {self.pending_dir} failed too "
                f"({spool_error}), so this record is lost; fix the folder's permissions or free disk space",
                key, None,
            ) from error

        logger.warning("audit: upload to %s failed (%s); the object is kept in %s", where, error, path)
        raise AuditNotWritten(
            f"could not write the audit object {key} to {where}: {error}; it is kept in {path} (mode 0600) "
            "and uploaded with the next audit record that reaches the bucket; check the bucket, its region and the state role's access to it",
            key, path,
        ) from error


def pending_dir(settings: Settings) -> Path:
    """Return the spool folder of audit objects that wait for upload."""
    return settings.work_dir / PENDING_DIR_NAME


def _pending_paths(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted(path for path in directory.iterdir() if path.is_file() and path.name.endswith(".jsonl"))


def _write_spool_file(directory: Path, key: str, body: bytes) -> Path:
    """Write ``body`` to the spool folder (0700) as a 0600 file named after the quoted ``key``."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(directory, 0o700)

    # Quoting turns "/" into "%2F" and "%" into "%25", so unquote() returns the exact key.
    path = directory / quote(key, safe="=")
    # Written under another name first, so flush_pending never uploads half a file.
    partial = path.with_name(path.name + _PARTIAL_SUFFIX)
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(body)
    os.chmod(partial, 0o600)
    os.replace(partial, path)
    return path


def audit_s3_client(settings: Settings, target: AwsTarget, run_id: str = "audit"):
    """Create an S3 client for the audit bucket: the state role when ``state.role_arn`` is set, else the base identity."""
    base = base_credentials(target, settings.credentials.instance_metadata)
    credentials = base
    if settings.state.role_arn:
        credentials = assume_role(base, settings.state.role_arn, role_session_name(run_id), settings.audit.region, target)
    return aws_client("s3", credentials, settings.audit.region, target)


def _check_range(since: date, until: date) -> None:
    if since > until:
        raise ConfigurationError(f"the start date {since} (--since) is after the end date {until} (--until); pass an earlier --since or a later --until")
    days = (until - since).days + 1
    if days > MAX_QUERY_DAYS:
        raise ConfigurationError(
            f"--since {since} to --until {until} covers {days} days, more than the {MAX_QUERY_DAYS} days one query reads "
            "(each day costs a list request); narrow the range, or query the bucket with Athena as docs/audit.md shows"
        )


def _days(since: date, until: date):
    day = since
    while day <= until:
        yield day
        day += timedelta(days=1)


def query(
    settings: Settings,
    s3_client,
    since: date,
    until: date,
    account: str | None = None,
    result: str | None = None,
    action: str | None = None,
    shard: str | None = None,
) -> list[AuditRecord]:
    """Read the records written on the UTC days ``since`` to ``until`` (both included) that match every filter.

    ``account`` matches the account name or id. ``result`` and ``action`` match whole values,
    ignoring case. ``shard`` matches a shard id or any id under it (``prod/app`` matches
    ``prod/app/s3``). Records come back oldest first.
    """
    _check_range(since, until)
    bucket = settings.audit.bucket
    matching: list[AuditRecord] = []
    try:
        for day in _days(since, until):
            for key in _list_keys(s3_client, bucket, partition_prefix(day)):
                matching += [record for record in _read_records(s3_client, bucket, key) if _matches(record, account, result, action, shard)]
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        if code == "NoSuchBucket":
            raise AuditError(
                f"the audit bucket {bucket} does not exist in {settings.audit.region}; create it (invoke sandbox.up creates it in the sandbox) "
                "or set audit.bucket and audit.region in orchestrator.toml"
            ) from error
        raise AuditError(f"could not read the audit bucket {bucket} in {settings.audit.region}: {error}") from error
    except BotoCoreError as error:
        raise AuditError(f"could not read the audit bucket {bucket} in {settings.audit.region}: {error}") from error

    return sorted(matching, key=_chronological)


def _list_keys(s3_client, bucket: str, prefix: str) -> list[str]:
    paginator = s3_client.get_paginator("list_objects_v2")
    keys: list[str] = []
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix, PaginationConfig={"PageSize": _LIST_PAGE_SIZE}):
        keys += [item["Key"] for item in page.get("Contents", []) if item["Key"].endswith(".jsonl")]
    return keys


def _read_records(s3_client, bucket: str, key: str) -> list[AuditRecord]:
    """Parse one audit object. A line that is not a JSON object is logged and skipped."""
    text = s3_client.get_object(Bucket=bucket, Key=key)["Body"].read().decode("utf-8", errors="replace")
    records: list[AuditRecord] = []
    # split("\n") rather than splitlines(), which would also split on characters inside strings.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as error:
            logger.warning("audit: skipped line %d of s3://%s/%s: invalid JSON (%s)", number, bucket, key, error)
            continue
        if not isinstance(data, dict):
            logger.warning("audit: skipped line %d of s3://%s/%s: a JSON %s, not an object", number, bucket, key, type(data).__name__)
            continue
        records.append(AuditRecord.from_dict(data))
    return records


def _matches(record: AuditRecord, account: str | None, result: str | None, action: str | None, shard: str | None) -> bool:
    if account and account not in (record.account, record.account_id):
        return False
    if result and record.result.casefold() != result.casefold():
        return False
    if action and record.action.casefold() != action.casefold():
        return False
    if shard:
        shard_id = shard.strip("/")
        if record.shard != shard_id and not record.shard.startswith(shard_id + "/"):
            return False
    return True


def _chronological(record: AuditRecord) -> tuple:
    moment = _parse_timestamp(record.timestamp) or datetime.min.replace(tzinfo=timezone.utc)
    return (moment, record.run_id, record.shard)


def format_records(records: list[AuditRecord], show_output: bool, redactor: Redactor) -> str:
    """Render ``records`` as a table for a person. With ``show_output``, each record's redacted output follows the table.

    Every cell and every output passes through ``redactor``, because the unredacted text
    belongs in the encrypted audit object only.
    """
    rows = []
    for record in records:
        seconds = record.total_seconds
        rows.append([record.timestamp, record.action, record.result, record.shard, record.actor, record.run_id, "" if seconds is None else f"{seconds:.1f}"])
    table = redactor.text(tabulate(rows, headers=TABLE_HEADERS, tablefmt="simple", colalign=("left",) * 6 + ("right",)))
    if not show_output:
        return table

    sections = [table]
    for record in records:
        heading = f"--- {record.timestamp} {record.action} {record.shard or '(whole run)'}: {record.result} (run {record.run_id}) ---"
        body = redactor.text(record.output) if record.output else "(no output recorded)"
        sections.append(redactor.text(heading) + "\n" + body)
    return "\n\n".join(sections)


def redacted_dict(record: AuditRecord, show_output: bool, redactor: Redactor) -> dict:
    """Return the record as a dict for JSON output: every string redacted, ``output`` only with ``show_output``.

    A value under a secret-like key (password, token, …) is masked whole. When redaction
    fails, the dict contains only ``run_id`` and a ``redaction`` entry saying so.
    """
    data = asdict(record)
    if not show_output:
        del data["output"]
    redacted = redactor.structure(data)
    if not isinstance(redacted, dict):
        return {"run_id": redactor.text(record.run_id), "redaction": redacted}
    return redacted


def _parse_date(value: str | date, flag: str) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    text = str(value).strip()
    try:
        if not _DATE.match(text):
            raise ValueError(text)
        return date.fromisoformat(text)
    except ValueError:
        raise ConfigurationError(f"{flag} {value!r} is not a valid date; expected YYYY-MM-DD, for example 2026-12-01") from None


def parse_date_range(since: str | date | None, until: str | date | None, today: date | None = None) -> tuple[date, date]:
    """Parse the ``--since`` and ``--until`` flags (YYYY-MM-DD, UTC days, both included).

    ``until`` defaults to today and ``since`` to seven days before ``until``.
    """
    last = _parse_date(until, "--until") if until is not None else (today or datetime.now(timezone.utc).date())
    first = _parse_date(since, "--since") if since is not None else last - timedelta(days=DEFAULT_QUERY_DAYS)
    _check_range(first, last)
    return first, last


def audit_main(
    settings: Settings,
    target: AwsTarget,
    since: str | date | None = None,
    until: str | date | None = None,
    account: str | None = None,
    result: str | None = None,
    action: str | None = None,
    shard: str | None = None,
    as_json: bool = False,
    show_output: bool = False,
    stream: TextIO | None = None,
) -> int:
    """Print the audit records that match the CLI flags, as a table or (``as_json``) as JSON lines; return 0.

    Errors are raised (ConfigurationError for invalid flags, AuditError for the bucket),
    because the CLI layer turns them into messages and exit codes.
    """
    stream = stream or sys.stdout
    first, last = parse_date_range(since, until)
    if action and action.casefold() not in ACTIONS:
        raise ConfigurationError(f"--action {action!r} is not an audited action; use one of {', '.join(ACTIONS)}")

    waiting = _pending_paths(pending_dir(settings))
    if waiting:
        logger.warning("audit: %d object(s) in %s are not uploaded yet, so this query does not see them", len(waiting), pending_dir(settings))

    records = query(settings, audit_s3_client(settings, target), first, last, account=account, result=result, action=action, shard=shard)
    redactor = Redactor()

    if as_json:
        for record in records:
            stream.write(json.dumps(redacted_dict(record, show_output, redactor), ensure_ascii=False) + "\n")
        return 0

    if not records:
        filters = ", ".join(f"{name} {value}" for name, value in (("account", account), ("result", result), ("action", action), ("shard", shard)) if value)
        stream.write(f"No audit record from {first} to {last}" + (f" matches {filters}" if filters else "") + f" in bucket {settings.audit.bucket}.\n")
        return 0

    stream.write(format_records(records, show_output, redactor) + "\n")
    return 0
