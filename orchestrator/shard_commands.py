"""Commands on one shard's state: backups, restore-state, rollback, unlock, errored-state.

Each command opens the shard the way a run does. It keeps other runs of this checkout out of
the working directory and runs Terraform with the credentials of the shard's account.
Terraform's output goes through the same runner into a redacted log, and each command writes
an audit record of what it did.
"""

from __future__ import annotations

import difflib
import json
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, TextIO

from botocore.exceptions import ClientError
from tabulate import tabulate

from . import sandbox as sandbox_module
from .audit import current_actor, git_revision
from .backups import BackupStore, with_serial
from .credentials import AwsTarget, CredentialBroker, aws_client
from .discovery import Shard
from .errored_state import ErroredStateStore
from .errors import OrchestratorError, SelectionError
from .rollback import ROLLED_BACK, prepare_rollback_directory
from .runs import base_environment, load_and_validate, new_run_id, write_audit_records
from .settings import Settings
from .shard_pipeline import RunContext, ShardPipeline
from .terraform import PLAN_HAS_CHANGES, ProcessRegistry, force_unlock_argv, plan_argv, raise_for_failure, show_json_argv, state_push_argv
from .toolchain import prepare_toolchain
from .workspace import VAR_FILE_NAME


class RestoreRejected(OrchestratorError):
    """The chosen backup cannot replace the shard's current state."""


class NotConfirmed(OrchestratorError):
    """The confirmation was declined, or standard input is not a terminal and --yes was not given."""


def confirm(question: str, assume_yes: bool, stream: TextIO) -> None:
    """Prompt with ``question``; raise NotConfirmed unless the reply is yes."""
    if assume_yes:
        return
    if not sys.stdin.isatty():
        raise NotConfirmed(f"{question} Confirmation is required, but standard input is not a terminal; pass --yes to confirm in a script")
    stream.write(f"{question} [y/N] ")
    stream.flush()
    if sys.stdin.readline().strip().lower() not in ("y", "yes"):
        raise NotConfirmed("cancelled; nothing was changed")


def find_shard(settings: Settings, shard_id: str) -> Shard:
    inventory = load_and_validate(settings)
    try:
        return inventory.shard(shard_id)
    except KeyError:
        close = difflib.get_close_matches(shard_id, [s.id for s in inventory.shards], n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "; list shards with: invoke shards"
        raise SelectionError(f"no shard {shard_id!r} (a shard id is <account>/<deployment>/<service>){hint}") from None


@dataclass
class ShardSession:
    shard: Shard
    settings: Settings
    target: AwsTarget
    broker: CredentialBroker
    context: RunContext | None = None
    pipeline: ShardPipeline | None = None

    @property
    def store(self) -> BackupStore:
        s3 = aws_client("s3", self.broker.state_credentials(), self.settings.state.region_for(self.shard.region), self.target)
        return BackupStore(s3, self.settings.state.bucket_for(self.shard.region), self.shard.state_key, self.settings.state.kms_key_id, self.shard.id)


@contextmanager
def open_shard(settings: Settings, shard_id: str, sandbox: bool, action: str, stream: TextIO, with_terraform: bool = True) -> Iterator[ShardSession]:
    """Set up credentials (and Terraform in the shard's working directory) for one command."""
    shard = find_shard(settings, shard_id)
    target = AwsTarget()
    if sandbox:
        target = AwsTarget(endpoint=sandbox_module.up(settings).endpoint)
    run_id = new_run_id()
    run_dir = settings.work_dir / "runs" / run_id
    private = run_dir / "private"
    private.mkdir(mode=0o700, parents=True, exist_ok=True)
    broker = CredentialBroker(target, settings.state.role_arn, run_id, private, shard.account.default_region, settings.credentials.instance_metadata)
    session = ShardSession(shard, settings, target, broker)
    try:
        if not with_terraform:
            yield session
            return
        toolchain = prepare_toolchain(settings.terraform.binary, settings.terraform.provider_mirror, settings.repo_root, settings.work_dir)
        aws_config = private / "aws-config"
        aws_config.write_text("", encoding="utf-8")
        session.context = RunContext(
            settings=settings, toolchain=toolchain, target=target, broker=broker, registry=ProcessRegistry(), run_id=run_id, run_dir=run_dir,
            action=action, base_environment=base_environment(sandbox), aws_config_file=aws_config,
            on_phase=lambda _shard, phase: stream.write(f"{shard.id}: {phase}\n"),
            git_revision=git_revision(settings.repo_root), actor=current_actor(settings.repo_root),
        )
        session.pipeline = ShardPipeline(shard, session.context)
        with session.pipeline.session():
            yield session
    finally:
        if session.context is not None and session.context.audit_records:
            write_audit_records(settings, broker, target, run_id, session.context.audit_records, stream)
        broker.remove_files()


def _audit(session: ShardSession, action: str, result: str, commands_from: int, details: dict) -> None:
    pipeline = session.pipeline
    commands = pipeline.runner.results[commands_from:]
    session.context.audit_records.append(pipeline._audit_record(action, result, commands, details))


# --- backups --------------------------------------------------------------------------------------

def list_backups(settings: Settings, shard_id: str, sandbox: bool, as_json: bool, stream: TextIO) -> int:
    with open_shard(settings, shard_id, sandbox, "backups", stream, with_terraform=False) as session:
        backups = session.store.list()
    if as_json:
        stream.write(json.dumps([backup.metadata for backup in backups], indent=2) + "\n")
        return 0
    if not backups:
        stream.write(f"no backups of {shard_id} yet; one is taken before every apply\n")
        return 0
    rows = []
    for backup in backups:
        meta = backup.metadata
        configuration = meta.get("configuration") or {}
        rows.append([
            backup.backup_id, meta.get("timestamp"), meta.get("reason"), meta.get("run_id"),
            meta.get("serial") if meta.get("sha256") else "(no state)", (meta.get("lineage") or "-")[:8], len(meta.get("resources", [])),
            f"{configuration.get('run_id', '-')} @ {str(configuration.get('git_revision', '-'))[:12]}" if configuration
            else "no resources (before the first apply)" if meta.get("empty") else "none recorded",
        ])
    stream.write(tabulate(rows, headers=["backup", "taken", "reason", "run", "serial", "lineage", "resources", "configuration (run @ git)"]) + "\n")
    stream.write(f"\nbucket {session.store.bucket}, prefix {session.store.backup_prefix()}\n")
    return 0


# --- restore-state -------------------------------------------------------------------------------

def restore_state(settings: Settings, shard_id: str, backup_id: str, sandbox: bool, assume_yes: bool, stream: TextIO) -> int:
    """Push a backup of the same lineage as the shard's state, then show how it differs from reality."""
    with open_shard(settings, shard_id, sandbox, "restore-state", stream) as session:
        pipeline, store = session.pipeline, session.store
        first_command = len(pipeline.runner.results)
        backup = store.get(backup_id)
        restored = store.state_of(backup)
        current = pipeline._pull_state("current")
        if not restored.exists:
            raise RestoreRejected(f"backup {backup_id} contains no state (it was taken before the shard's first apply); to remove the resources use invoke rollback --shard {shard_id} --backup {backup_id}")
        if current.exists and current.lineage != restored.lineage:
            raise RestoreRejected(
                f"backup {backup_id} has lineage {restored.lineage}, the current state {current.lineage}: it belongs to another state history and would replace it; "
                f"choose a backup of lineage {current.lineage} (invoke backups --shard {shard_id})"
            )
        only_backup = sorted(set(restored.addresses) - set(current.addresses))
        only_current = sorted(set(current.addresses) - set(restored.addresses))
        stream.write(
            f"restore {backup_id} (serial {restored.serial}, {len(restored.addresses)} resource(s)) over the current state (serial {current.serial}, {len(current.addresses)} resource(s))\n"
            f"  only in the backup: {', '.join(only_backup) or 'none'}\n  only in the current state: {', '.join(only_current) or 'none'}\n"
        )
        confirm(f"Replace the state of {shard_id} with backup {backup_id}?", assume_yes, stream)

        safety = pipeline._backup(store, current, "pre-restore")
        # Terraform accepts the push only with a higher serial of the same lineage, which the lock table's digest also expects.
        pushed_file = pipeline.runner.cwd / "restore.tfstate.json"
        pushed_file.touch(mode=0o600)
        pushed_file.write_bytes(with_serial(restored.raw, (current.serial or 0) + 1))
        try:
            pushed = pipeline.runner.run(state_push_argv(session.context.toolchain.binary, pushed_file.name, settings.terraform.lock_timeout))
        finally:
            pushed_file.unlink(missing_ok=True)
        raise_for_failure(pushed, f"{shard_id}: terraform state push")

        drift = refresh_only_drift(pipeline)
        _audit(session, "restore-state", "restored", first_command, {"backup_id": backup_id, "pre_restore_backup": safety.backup_id, "drift": drift})
    stream.write(f"restored {backup_id}; the state before it is kept as backup {safety.backup_id}\n")
    if drift:
        stream.write(f"the refresh-only plan finds {len(drift)} resource(s) that differ from the restored state:\n")
        for item in drift:
            stream.write(f"  {item['address']}: {'/'.join(item['actions'])}\n")
        flag = " --sandbox" if sandbox else ""
        stream.write(
            "a delete means the resource no longer exists; an update can also be attributes the provider fills in on refresh.\n"
            f"invoke plan --deployment {shard_id}{flag} shows what an apply would change; invoke apply converges, invoke rollback picks another configuration\n"
        )
    else:
        stream.write("the restored state matches reality (refresh-only plan found no differences)\n")
    return 0


def refresh_only_drift(pipeline: ShardPipeline) -> list[dict]:
    """Return what a refresh-only plan finds different between the state and the real resources."""
    binary = pipeline.context.toolchain.binary
    private = pipeline.artefacts / "private"
    private.mkdir(mode=0o700, exist_ok=True)
    plan_file, plan_json = private / "refresh.tfplan", private / "refresh-plan.json"
    try:
        result = pipeline.runner.run(plan_argv(binary, VAR_FILE_NAME, str(plan_file), pipeline.context.settings.terraform.lock_timeout, refresh_only=True), ok_codes=(0, PLAN_HAS_CHANGES))
        raise_for_failure(result, f"{pipeline.shard.id}: terraform plan -refresh-only")
        if result.exit_code != PLAN_HAS_CHANGES:
            return []
        shown = pipeline.runner.run(show_json_argv(binary, str(plan_file)), stdout_path=plan_json)
        raise_for_failure(shown, f"{pipeline.shard.id}: terraform show -json")
        document = json.loads(plan_json.read_text(encoding="utf-8"))
        return [{"address": item["address"], "actions": item.get("change", {}).get("actions", [])} for item in document.get("resource_drift", [])]
    finally:
        plan_file.unlink(missing_ok=True)
        plan_json.unlink(missing_ok=True)


# --- rollback on request ------------------------------------------------------------------------

def rollback(settings: Settings, shard_id: str, backup_id: str, sandbox: bool, assume_yes: bool, stream: TextIO) -> int:
    """Converge a shard to the configuration recorded with a backup, and record it as the last good one."""
    with open_shard(settings, shard_id, sandbox, "rollback", stream) as session:
        pipeline, store = session.pipeline, session.store
        first_command = len(pipeline.runner.results)
        backup = store.get(backup_id)
        bundle = store.configuration_of(backup)
        destroy = bundle is None
        if destroy and not backup.metadata.get("empty"):
            raise RestoreRejected(f"backup {backup_id} has no recorded configuration, so there is nothing to converge to; choose another (invoke backups --shard {shard_id})")
        configuration = backup.metadata.get("configuration") or {}
        target = "no resources (the backup was taken before the shard's first apply)" if destroy else f"the configuration applied by run {configuration.get('run_id')} (git {configuration.get('git_revision')})"

        current = pipeline._pull_state("current")
        safety = pipeline._backup(store, current, "pre-rollback")
        runner = pipeline.runner
        if not destroy:
            runner = pipeline._runner_in(prepare_rollback_directory(settings, session.shard, bundle, session.target.endpoint))
            pipeline._init_in(runner)

        def ask(changes: list[dict]) -> bool:
            stream.write(f"rollback of {shard_id} to {target} changes {len(changes)} resource(s):\n")
            for change in changes:
                stream.write(f"  {change['address']}: {'/'.join(change['actions'])}\n")
            confirm("Apply these changes?", assume_yes, stream)
            return True

        planned, left, error = pipeline.converge(runner, destroy=destroy, before_apply=ask)
        if runner is not pipeline.runner:
            pipeline.runner.results.extend(runner.results)
        status = ROLLED_BACK if not error else "rollback failed"
        if not error and bundle is not None:
            store.record_good(bundle, {**configuration, "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "restored_by_run": session.context.run_id})
        _audit(session, "rollback", status, first_command, {"backup_id": backup_id, "pre_rollback_backup": safety.backup_id, "planned": planned, "not_converged": left, "error": error})
    if error:
        stream.write(f"rollback failed: {error}\nnot where it should be:\n" + "".join(f"  {c['address']}: {'/'.join(c['actions'])}\n" for c in left))
        return 1
    stream.write(f"{shard_id}: {ROLLED_BACK} to {target} ({len(planned)} change(s)); the state before it is kept as backup {safety.backup_id}\n")
    return 0


# --- locks ----------------------------------------------------------------------------------------

def read_lock(session: ShardSession) -> dict | None:
    """Return the lock info of the shard's state (S3 lock file or DynamoDB item), or None."""
    settings, shard = session.settings, session.shard
    bucket = settings.state.bucket_for(shard.region)
    region = settings.state.region_for(shard.region)
    credentials = session.broker.state_credentials()
    if settings.state.lock == "dynamodb":
        dynamodb = aws_client("dynamodb", credentials, region, session.target)
        item = dynamodb.get_item(TableName=settings.state.dynamodb_table, Key={"LockID": {"S": f"{bucket}/{shard.state_key}"}}).get("Item")
        if not item or "Info" not in item:
            return None
        return json.loads(item["Info"]["S"])
    s3 = aws_client("s3", credentials, region, session.target)
    try:
        return json.loads(s3.get_object(Bucket=bucket, Key=f"{shard.state_key}.tflock")["Body"].read())
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
            return None
        raise


def describe_lock(info: dict) -> str:
    return f"lock {info.get('ID', '?')} held by {info.get('Who', '?')} since {info.get('Created', '?')} for {info.get('Operation', '?')} (Terraform {info.get('Version', '?')})"


def unlock(settings: Settings, shard_id: str, sandbox: bool, assume_yes: bool, stream: TextIO) -> int:
    """Show who holds the shard's state lock and release it after confirmation."""
    with open_shard(settings, shard_id, sandbox, "unlock", stream) as session:
        info = read_lock(session)
        if info is None:
            stream.write(f"{shard_id}: the state is not locked; nothing to release\n")
            return 0
        stream.write(f"{shard_id}: {describe_lock(info)}\n")
        confirm("Release it? Only do this when that run is dead: releasing a live run's lock lets two runs write one state.", assume_yes, stream)
        pipeline = session.pipeline
        first_command = len(pipeline.runner.results)
        result = pipeline.runner.run(force_unlock_argv(session.context.toolchain.binary, info["ID"]))
        _audit(session, "unlock", "released" if result.ok else "failed", first_command, {"lock": info})
        raise_for_failure(result, f"{shard_id}: terraform force-unlock")
    stream.write(f"{shard_id}: released lock {info['ID']}\n")
    return 0


# --- errored.tfstate ------------------------------------------------------------------------------

def errored_state(settings: Settings, shard_id: str, sandbox: bool, push: bool, export: Path | None, stream: TextIO) -> int:
    """Show, push or export the state kept encrypted after a failed state upload."""
    shard = find_shard(settings, shard_id)
    store = ErroredStateStore.for_shard(settings.work_dir, f"{shard.account.name}/{shard.deployment.name}/{shard.service.name}")
    marker = store.marker
    if marker is None:
        stream.write(f"{shard_id}: no errored state is kept; applies are not blocked\n")
        return 0
    stream.write(f"{shard_id}: state of run {marker['run_id']} kept encrypted since {marker['kept_at']} ({marker['file']}); last error: {marker.get('reason', '?')}\n")
    if export is not None:
        store.decrypt_to(export)
        stream.write(f"written in clear to {export} (mode 0600); it holds secrets, delete it when done\n")
    if push:
        with open_shard(settings, shard_id, sandbox, "apply", stream) as session:
            session.pipeline._push_kept_errored_state()
        stream.write(f"{shard_id}: pushed; applies are no longer blocked\n")
    return 0

