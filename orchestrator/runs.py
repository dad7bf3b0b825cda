"""One run: discover → validate → select → prepare → schedule the shards → summarise.

Exit codes (stable, documented in the README):

- 0: success (for plan: no changes, or changes without ``--detailed-exitcode``)
- 1: at least one shard failed or was skipped because a prerequisite failed
- 2: plan with ``--detailed-exitcode`` found changes
- 3: validation failed; nothing was planned
- 4: configuration or selection error (settings, unknown account, nothing selected, terraform
  or the provider missing, sandbox not reachable)
- 130: interrupted by Ctrl-C or SIGTERM
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO

from botocore.exceptions import ClientError, EndpointConnectionError

from . import sandbox as sandbox_module
from .audit import AuditNotWritten, AuditTrail, current_actor, git_revision
from .credentials import AwsTarget, CredentialBroker, SandboxUnreachable, aws_client
from .discovery import Inventory, Shard, discover
from .errors import ConfigurationError, SelectionError, ValidationFailed
from .progress import Progress
from .redaction import Redactor
from .scheduler import Outcome, run_graph
from .selection import SelectionRequest, select_shards, shard_dependencies
from .settings import Settings
from .policy.batching import CheckovBatcher
from .policy.stage import PolicyStage, PolicyVerdict
from .shard_pipeline import (
    APPLIED,
    INTERRUPTED,
    NO_CHANGES,
    PLANNED,
    STATUS_FAILED,
    STATUS_SKIPPED,
    WAITING,
    RunContext,
    ShardPipeline,
    ShardResult,
    policy_metadata,
    record_plan_policy,
)
from .terraform import INTERRUPT_GRACE_SECONDS, BackendMissing, ProcessRegistry
from .toolchain import prepare_toolchain
from .validation import validate_inventory, validation_warnings

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_SHARD_FAILED = 1
EXIT_CHANGES_PRESENT = 2
EXIT_VALIDATION_FAILED = 3
EXIT_CONFIGURATION_ERROR = 4
EXIT_INTERRUPTED = 130

# Variables passed from the caller's environment to Terraform; nothing else is, and no AWS_*.
PASSED_THROUGH = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "TZ", "SSL_CERT_FILE", "SSL_CERT_DIR", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")


@dataclass
class RunOptions:
    action: str  # "plan" or "apply"
    sandbox: bool = False
    workers: int | None = None
    detailed_exitcode: bool = False
    json_report: Path | None = None
    markdown_report: Path | None = None
    stream: TextIO | None = None


@dataclass
class RunReport:
    run_id: str
    action: str
    selection: str
    started_at: str
    duration: float = 0.0
    terraform: str = ""
    sandbox_endpoint: str | None = None
    run_dir: str = ""
    results: list[ShardResult] = field(default_factory=list)
    interrupted: bool = False
    redactor: Redactor = field(default_factory=Redactor, repr=False)

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return EXIT_INTERRUPTED
        if any(r.status in (STATUS_FAILED, STATUS_SKIPPED, INTERRUPTED) for r in self.results):
            return EXIT_SHARD_FAILED
        return EXIT_OK

    def totals(self) -> dict:
        counts: dict[str, int] = {}
        for result in self.results:
            counts[result.status] = counts.get(result.status, 0) + 1
        return counts

    def as_dict(self) -> dict:
        return {
            "run_id": self.run_id,
            "action": self.action,
            "selection": self.selection,
            "started_at": self.started_at,
            "duration_seconds": round(self.duration, 2),
            "terraform": self.terraform,
            "sandbox_endpoint": self.sandbox_endpoint,
            "interrupted": self.interrupted,
            "exit_code": self.exit_code,
            "totals": self.totals(),
            "shards": [result.as_dict() for result in self.results],
        }


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def load_and_validate(settings: Settings) -> Inventory:
    """Discover the repository and raise ValidationFailed with every problem found."""
    inventory = discover(settings)
    diagnostics = validate_inventory(inventory, settings.repo_root)
    if diagnostics:
        raise ValidationFailed(diagnostics)
    return inventory


def base_environment(sandbox: bool) -> dict[str, str]:
    environment = {name: os.environ[name] for name in PASSED_THROUGH if name in os.environ}
    if sandbox:
        # The sandbox is on loopback: a corporate proxy must never see its traffic.
        for name in ("NO_PROXY", "no_proxy"):
            existing = environment.get(name, "")
            environment[name] = ",".join(filter(None, [existing, "127.0.0.1", "localhost"]))
    return environment


def check_state_buckets(shards: list[Shard], settings: Settings, broker: CredentialBroker, target: AwsTarget, require_versioning: bool) -> None:
    """Fail before any shard starts when a state bucket is missing or (for apply) unversioned."""
    credentials = broker.state_credentials()
    buckets = {settings.state.bucket_for(shard.region): settings.state.region_for(shard.region) for shard in shards}
    for bucket, region in sorted(buckets.items()):
        s3 = aws_client("s3", credentials, region, target)
        try:
            s3.head_bucket(Bucket=bucket)
            versioning = s3.get_bucket_versioning(Bucket=bucket).get("Status")
        except EndpointConnectionError as error:
            raise SandboxUnreachable(f"cannot reach S3 for state bucket {bucket}: {error}; with --sandbox check invoke sandbox.status") from error
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            if code in ("404", "NoSuchBucket", "NotFound"):
                raise BackendMissing(f"state bucket {bucket} ({region}) does not exist; create it with invoke bootstrap (or use --sandbox, which creates it)") from error
            raise ConfigurationError(f"cannot read state bucket {bucket} ({region}): {error}") from error
        if require_versioning and versioning != "Enabled":
            raise ConfigurationError(
                f"state bucket {bucket} has no versioning, so an overwritten state could not be recovered; "
                f"enable it (aws s3api put-bucket-versioning --bucket {bucket} --versioning-configuration Status=Enabled) or run invoke bootstrap"
            )


class InterruptHandler:
    """Forward Ctrl-C to Terraform: first SIGINT (time to release locks), a second one SIGTERM."""

    def __init__(self, registry: ProcessRegistry, progress: Progress):
        self.registry = registry
        self.progress = progress
        self.count = 0
        self.previous: dict = {}

    def __enter__(self) -> "InterruptHandler":
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum, frame) -> None:
        self.count += 1
        if self.count == 1:
            forwarded = self.registry.interrupt()
            self.progress.note(f"interrupt: SIGINT forwarded to {forwarded} terraform process(es); waiting up to {INTERRUPT_GRACE_SECONDS} s for them to release their locks (press Ctrl-C again to terminate)")
        else:
            self.progress.note("second interrupt: sending SIGTERM to terraform")
            self.registry.escalate()


def execute(settings: Settings, request: SelectionRequest, options: RunOptions) -> RunReport:
    """Run plan or apply for the selected shards and return the report."""
    stream = options.stream or sys.stderr
    inventory = load_and_validate(settings)
    for warning in validation_warnings(inventory):
        stream.write(f"warning: {warning}\n")
    shards = select_shards(inventory, settings, request)
    report = RunReport(run_id=new_run_id(), action=options.action, selection=request.describe(), started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    if not shards:
        if request.by_change:
            stream.write(f"No shard is affected by {request.describe()}; nothing to {options.action}.\n")
            return report
        raise SelectionError(f"{request.describe()} selects no shard; list shards with: invoke shards")

    # The toolchain comes first: a missing binary or mirror is reported before anything starts.
    toolchain = prepare_toolchain(settings.terraform.binary, settings.terraform.provider_mirror, settings.repo_root, settings.work_dir)
    report.terraform = f"{Path(toolchain.binary).name} {toolchain.version}"

    policy_stage = None
    if settings.policy.checkov and not (settings.tools_dir / "checkov").is_dir():
        stream.write(f"Installing Checkov into its own environment under {settings.tools_dir} (once; about a minute)...\n")
    if settings.policy.opa or settings.policy.checkov:
        policy_stage = PolicyStage(settings.policies_dir, settings.tools_dir, settings.policy)

    target = AwsTarget()
    if options.sandbox:
        status = sandbox_module.up(settings)
        target = AwsTarget(endpoint=status.endpoint)
        report.sandbox_endpoint = status.endpoint
    run_dir = settings.work_dir / "runs" / report.run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    report.run_dir = str(run_dir)
    secrets_dir = run_dir / "private"
    secrets_dir.mkdir(mode=0o700, exist_ok=True)
    aws_config_file = secrets_dir / "aws-config"
    aws_config_file.write_text("", encoding="utf-8")

    sts_region = shards[0].account.default_region
    broker = CredentialBroker(target, settings.state.role_arn, report.run_id, secrets_dir, sts_region, settings.credentials.instance_metadata)
    registry = ProcessRegistry()
    workers = options.workers or settings.terraform.workers
    # Collects the sensitive values of every shard's plan, for the run's reports.
    run_redactor = Redactor(extra_patterns=settings.redaction.extra_patterns)
    context = None
    started = time.monotonic()
    try:
        check_state_buckets(shards, settings, broker, target, require_versioning=options.action == "apply")
        stream.write(f"{options.action}: {len(shards)} shard(s), {workers} worker(s), run {report.run_id}" + (f", sandbox {target.endpoint}" if target.is_sandbox else "") + "\n")

        with Progress(total=len(shards), stream=stream) as progress, InterruptHandler(registry, progress):
            context = RunContext(
                git_revision=git_revision(settings.repo_root),
                actor=current_actor(settings.repo_root),
                redactor=run_redactor,
                settings=settings,
                toolchain=toolchain,
                target=target,
                broker=broker,
                registry=registry,
                run_id=report.run_id,
                run_dir=run_dir,
                action=options.action,
                base_environment=base_environment(options.sandbox),
                aws_config_file=aws_config_file,
                on_phase=progress.phase,
                policy_stage=policy_stage,
                checkov_batcher=CheckovBatcher(policy_stage.scan_checkov) if policy_stage and settings.policy.checkov and options.action == "apply" else None,
            )
            by_id = {shard.id: shard for shard in shards}

            def work(shard_id: str, prerequisites: dict[str, Outcome]) -> Outcome:
                outcome = ShardPipeline(by_id[shard_id], context).run(prerequisites)
                result: ShardResult = outcome.value
                detail = result.error.splitlines()[0] if result.error else "; ".join(result.notes)
                progress.finished(shard_id, result.status, detail)
                return outcome

            def skipped(shard_id: str, outcome: Outcome) -> None:
                progress.finished(shard_id, STATUS_SKIPPED if not registry.cancelled.is_set() else INTERRUPTED, outcome.detail)

            outcomes = run_graph([s.id for s in shards], shard_dependencies(shards), work, workers, registry.cancelled, on_skip=skipped)
            if options.action == "plan" and policy_stage is not None and not registry.cancelled.is_set():
                check_plan_policies(shards, outcomes, policy_stage, settings, progress)
        if context is not None:
            write_audit_records(settings, broker, target, report.run_id, context.audit_records, stream)
    finally:
        broker.remove_files()

    report.duration = time.monotonic() - started
    report.interrupted = registry.cancelled.is_set()
    for shard in shards:
        outcome = outcomes[shard.id]
        if isinstance(outcome.value, ShardResult):
            report.results.append(outcome.value)
        else:
            result = ShardResult.for_shard(shard)
            result.status = INTERRUPTED if report.interrupted else STATUS_SKIPPED
            result.error = outcome.detail
            report.results.append(result)

    from .markdown_report import render_markdown

    markdown = run_redactor.text(render_markdown(report))
    # Plan JSON contains secrets in clear text, so it is deleted once the reports no longer need it.
    for result in report.results:
        if result.plan_json_file:
            Path(result.plan_json_file).unlink(missing_ok=True)
            result.plan_json_file = ""
    report.redactor = run_redactor
    write_report(report, run_dir / "report.json")
    if options.json_report:
        write_report(report, options.json_report)
    (run_dir / "report.md").write_text(markdown, encoding="utf-8")
    if options.markdown_report:
        options.markdown_report.write_text(markdown, encoding="utf-8")
    _point_latest(settings.work_dir / "runs", report.run_id)
    return report


def write_audit_records(settings: Settings, broker: CredentialBroker, target: AwsTarget, run_id: str, records: list, stream: TextIO) -> None:
    """Write the run's audit records; when the bucket cannot take them they are kept locally."""
    if not records:
        return
    try:
        s3 = aws_client("s3", broker.state_credentials(), settings.audit.region, target)
        trail = AuditTrail(settings, s3)
        trail.flush_pending()
        trail.write(run_id, records)
    except AuditNotWritten as error:
        stream.write(f"warning: {error}\n")
    except Exception as error:  # noqa: BLE001 - the records are spooled by AuditTrail; the run's result stands
        stream.write(f"warning: audit records of run {run_id} not written: {error}\n")


def check_plan_policies(shards: list[Shard], outcomes: dict, policy_stage: PolicyStage, settings: Settings, progress: Progress) -> None:
    """Check every planned shard of a plan run: OPA per shard, one Checkov process for all."""
    planned = [(shard, outcomes[shard.id].value) for shard in shards if isinstance(outcomes[shard.id].value, ShardResult) and outcomes[shard.id].value.status == PLANNED]
    if not planned:
        return
    progress.note(f"policy: checking {len(planned)} plan(s)")
    checkov_results: dict = {}
    checkov_error = None
    if settings.policy.checkov:
        try:
            checkov_results = policy_stage.scan_checkov({result.shard_id: Path(result.plan_json_file) for _, result in planned})
        except Exception as error:  # noqa: BLE001 - reported as every shard's policy error, never a pass
            checkov_error = f"Checkov: {error}"

    for shard, result in planned:
        verdict = PolicyVerdict()
        policy_stage.evaluate_opa(Path(result.plan_json_file), policy_metadata(shard), verdict)
        if checkov_error:
            verdict.errors.append(checkov_error)
        elif settings.policy.checkov:
            policy_stage.record_checkov(checkov_results.get(result.shard_id), verdict)
        record_plan_policy(settings, shard, result, verdict)
        progress.note(f"{shard.id:<40} policy {verdict.status}" + (f": {len(verdict.failures)} failure(s)" if verdict.failures else ""))


def write_report(report: RunReport, path: Path) -> None:
    """Validate the report against the shipped schema, then write it redacted to ``path``.

    Raises ValueError and writes nothing when the report does not match the schema. That is a
    bug in the orchestrator, never a problem of the user's configuration.
    """
    from .report_schema import validate_report

    document = report.as_dict()
    # The unredacted document is validated, because redaction may turn a number equal to a
    # sensitive value into text, and that is not a bug.
    try:
        validate_report(document)
    except ValueError as error:
        # jsonschema's messages quote the values they reject, and those may be secrets.
        raise ValueError(f"{path} not written: {report.redactor.text(str(error))}") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.redactor.structure(document), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _point_latest(runs_dir: Path, run_id: str) -> None:
    latest = runs_dir / "latest"
    try:
        if latest.is_symlink() or latest.exists():
            latest.unlink()
        latest.symlink_to(run_id)
    except OSError:
        pass


def plan_exit_code(report: RunReport, detailed_exitcode: bool) -> int:
    code = report.exit_code
    if code == EXIT_OK and detailed_exitcode and any(r.status in (PLANNED, WAITING) for r in report.results):
        return EXIT_CHANGES_PRESENT
    return code


