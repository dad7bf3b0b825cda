"""One shard, start to end: workspace, init, plan, show, apply.

Fewer Terraform processes is what makes a run fast (each one that configures the AWS
provider costs seconds of CPU), so:

- a plan with no changes (exit code 0 of ``-detailed-exitcode``) is the only command run;
- a changed shard runs ``plan -out`` and ``show -json``, and apply uses that saved plan;
- ``init`` runs only when what it depends on changed;
- ``apply`` reuses the saved plan of an earlier plan run when its inputs are unchanged and
  Terraform accepts it as current.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from .audit import AuditRecord, utc_timestamp
from .backups import Backup, BackupError, BackupStore, StateSnapshot, build_bundle, new_backup_id
from .credentials import AwsTarget, CredentialBroker, aws_client
from .discovery import Shard
from .errored_state import ERRORED_STATE_FILE, ErroredStateBlocks, ErroredStateStore
from .errors import OrchestratorError
from .plan_summary import ChangeCounts, count_changes
from .policy.batching import CheckovBatcher
from .policy.stage import PolicyFailed, PolicyStage, PolicyVerdict
from .redaction import Redactor
from .rollback import (
    NOT_ROLLED_BACK,
    PARTLY_ROLLED_BACK,
    ROLLBACK_FAILED,
    ROLLED_BACK,
    RollbackOutcome,
    planned_changes,
    prepare_rollback_directory,
)
from .scheduler import FAILED, SKIPPED, SUCCEEDED, Outcome
from .settings import Settings
from .terraform import (
    PLAN_HAS_CHANGES,
    Interrupted,
    ProcessRegistry,
    Runner,
    StalePlan,
    StateLockError,
    TerraformError,
    apply_argv,
    init_argv,
    plan_argv,
    raise_for_failure,
    show_json_argv,
    state_pull_argv,
    state_push_argv,
)
from .toolchain import Toolchain
from .workspace import VAR_FILE_NAME, Workspace, WorkspaceWaitInterrupted, module_file_names, prepare_workspace, shard_directory, workspace_lock

logger = logging.getLogger(__name__)

SAVED_PLAN_POINTER = ".orchestrator-saved-plan.json"

# Shard statuses shown in the summary and reports.
NO_CHANGES = "no changes"
PLANNED = "planned"
APPLIED = "applied"
STATUS_FAILED = "failed"
STATUS_SKIPPED = "skipped"
WAITING = "waiting"
INTERRUPTED = "interrupted"

# How often one apply run plans a shard again when another run changed its state meanwhile.
STALE_PLAN_RETRIES = 2


@dataclass
class ShardResult:
    shard_id: str
    account: str
    account_id: str
    region: str
    service: str
    project: str
    state_key: str
    deployment_file: str
    status: str = STATUS_SKIPPED
    counts: ChangeCounts = field(default_factory=ChangeCounts)
    duration: float = 0.0
    error: str = ""
    notes: list[str] = field(default_factory=list)
    commands: list[dict] = field(default_factory=list)
    log_file: str = ""
    plan_file: str = ""
    plan_json_file: str = ""
    used_saved_plan: bool = False
    has_changes: bool = False
    policy: dict = field(default_factory=dict)
    backup_id: str = ""
    rollback: dict = field(default_factory=dict)

    @classmethod
    def for_shard(cls, shard: Shard) -> "ShardResult":
        return cls(
            shard_id=shard.id,
            account=shard.account.name,
            account_id=shard.account_id,
            region=shard.region,
            service=shard.service.name,
            project=shard.project,
            state_key=shard.state_key,
            deployment_file=shard.deployment.path,
        )

    def as_dict(self) -> dict:
        data = {key: value for key, value in self.__dict__.items() if key != "counts"}
        data["counts"] = self.counts.as_dict()
        return data


@dataclass
class RunContext:
    """Settings, toolchain, credentials and callbacks shared by every shard of one run."""

    settings: Settings
    toolchain: Toolchain
    target: AwsTarget
    broker: CredentialBroker
    registry: ProcessRegistry
    run_id: str
    run_dir: Path
    action: str  # "plan" or "apply"
    base_environment: dict[str, str]
    aws_config_file: Path
    on_phase: Callable[[str, str], None]
    policy_stage: PolicyStage | None = None
    checkov_batcher: CheckovBatcher | None = None
    init_lock: threading.Lock = field(default_factory=threading.Lock)
    git_revision: str = "unknown"
    actor: str = "unknown"
    audit_records: list = field(default_factory=list)
    redactor: Redactor = field(default_factory=Redactor)


def policy_metadata(shard: Shard) -> dict:
    """Return the shard facts policies see under ``input.orchestrator``."""
    return {
        "shard": shard.id,
        "account": shard.account.name,
        "account_id": shard.account_id,
        "environment": shard.environment,
        "region": shard.region,
        "service": shard.service.name,
        "project": shard.project,
        "deployment_file": shard.deployment.path,
    }


def shard_environment(context: RunContext, credentials_file: Path) -> dict[str, str]:
    """Build the complete environment of the shard's Terraform processes."""
    environment = dict(context.base_environment)
    environment.update(
        {
            "TF_IN_AUTOMATION": "1",
            "TF_INPUT": "0",
            "CHECKPOINT_DISABLE": "1",
            "TF_CLI_CONFIG_FILE": str(context.toolchain.cli_config_path),
            "AWS_SHARED_CREDENTIALS_FILE": str(credentials_file),
            "AWS_CONFIG_FILE": str(context.aws_config_file),
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_SDK_LOAD_CONFIG": "0",
        }
    )
    return environment


class ShardPipeline:
    """Plan or apply one shard. ``run`` catches every exception and returns it as the shard's failure."""

    def __init__(self, shard: Shard, context: RunContext):
        self.shard = shard
        self.context = context
        self.result = ShardResult.for_shard(shard)
        self.artefacts = context.run_dir / "shards" / shard.id
        self.redactor = Redactor(extra_patterns=context.settings.redaction.extra_patterns)
        self._log_handle = None
        self.runner: Runner | None = None
        self._rollback_from: int | None = None

    # --- entry point ---------------------------------------------------------------------------

    def run(self, prerequisites: dict[str, Outcome]) -> Outcome:
        started = time.monotonic()
        self.artefacts.mkdir(parents=True, exist_ok=True)
        log_path = self.artefacts / "terraform.log"
        self.result.log_file = str(log_path)
        if self.context.checkov_batcher is not None:
            self.context.checkov_batcher.enter()
        try:
            with self._log_and_directory():
                self._run(prerequisites)
        except (Interrupted, WorkspaceWaitInterrupted) as error:
            self.result.status = INTERRUPTED
            self.result.error = str(error)
        except TerraformError as error:
            self._fail(error, prerequisites)
        except OrchestratorError as error:
            self.result.status = STATUS_FAILED
            self.result.error = self.redactor.text(str(error))
        except Exception as error:  # noqa: BLE001 - reported as this shard's failure, never a crash of the run
            logger.exception("internal error in shard %s", self.shard.id)
            self.result.status = STATUS_FAILED
            self.result.error = f"internal error: {type(error).__name__}: {error}"
        finally:
            if self.context.checkov_batcher is not None:
                self.context.checkov_batcher.leave()
            self.result.duration = time.monotonic() - started
            self._add_audit_records()

        if self.result.status in (NO_CHANGES, PLANNED, APPLIED, WAITING):
            return Outcome(SUCCEEDED, self.result.error, self.result)
        if self.result.status == INTERRUPTED:
            return Outcome(SKIPPED, self.result.error, self.result)
        return Outcome(FAILED, self.result.error, self.result)

    def _audit_record(self, action: str, result: str, commands: list, details: dict) -> AuditRecord:
        shard = self.shard
        return AuditRecord(
            timestamp=utc_timestamp(),
            actor=self.context.actor,
            run_id=self.context.run_id,
            action=action,
            result=result,
            shard=shard.id,
            account=shard.account.name,
            account_id=shard.account_id,
            region=shard.region,
            service=shard.service.name,
            project=shard.project,
            git_revision=self.context.git_revision,
            durations={
                "total": round(sum(c.duration for c in commands), 2),
                "commands": [{"command": c.command, "seconds": round(c.duration, 2), "exit_code": c.exit_code} for c in commands],
            },
            # The audit object is encrypted and is the one place that keeps Terraform's output unredacted.
            output="\n".join(f"$ {' '.join(c.argv)}\n{c.output}" for c in commands),
            details=details,
        )

    def _add_audit_records(self) -> None:
        commands = list(self.runner.results) if self.runner is not None else []
        split = self._rollback_from if self._rollback_from is not None else len(commands)
        details = {"status": self.result.status, "error": self.result.error, "backup_id": self.result.backup_id, "counts": self.result.counts.as_dict(), "policy": self.result.policy.get("status")}
        self.context.audit_records.append(self._audit_record(self.context.action, self.result.status, commands[:split], details))
        if self.result.rollback:
            rollback = self.result.rollback
            self.context.audit_records.append(self._audit_record("rollback", rollback["status"], commands[split:], rollback))

    def _fail(self, error: TerraformError, prerequisites: dict[str, Outcome]) -> None:
        pending = [shard_id for shard_id, outcome in prerequisites.items() if isinstance(outcome.value, ShardResult) and outcome.value.has_changes and outcome.value.status == PLANNED]
        if self.context.action == "plan" and pending:
            # In a plan run the prerequisite's changes are not applied yet: a data source that
            # cannot find a key or role it is about to create fails this plan, and that is expected.
            self.result.status = WAITING
            self.result.notes.append(f"re-plan after {', '.join(sorted(pending))} applies: this plan needs what that shard will create")
            self.result.error = error.headline
            return
        self.result.status = STATUS_FAILED
        self.result.error = self.redactor.text(str(error))

    # --- steps ---------------------------------------------------------------------------------

    def _log(self, line: str) -> None:
        if self._log_handle is not None:
            self._log_handle.write(self.redactor.line(line) + "\n")
            self._log_handle.flush()

    def _phase(self, name: str) -> None:
        self.context.on_phase(self.shard.id, name)
        self._log(f"# phase: {name}")

    def open_workspace(self) -> Workspace:
        """Prepare the shard's working directory and its runner; init when needed."""
        context = self.context
        self._phase("prepare")
        workspace = prepare_workspace(self.shard, context.settings, context.target.endpoint, context.toolchain.cli_config_path.read_text(encoding="utf-8"))
        credentials_file = context.broker.credentials_file(self.shard.account.name, self.shard.account.deploy_role_arn)
        self.runner = Runner(
            cwd=workspace.directory,
            environment=shard_environment(context, credentials_file),
            registry=context.registry,
            timeout_seconds=context.settings.terraform.command_timeout_minutes * 60,
            log_line=self._log,
        )
        self._init(workspace)
        return workspace

    @contextmanager
    def _log_and_directory(self) -> Iterator[None]:
        """Open the shard's log and hold its working directory against other runs of this checkout."""
        with open(self.result.log_file, "a", encoding="utf-8") as self._log_handle:
            directory = shard_directory(self.context.settings, self.shard)
            with workspace_lock(directory, lambda: self._phase("waiting for another run of this shard"), self.context.registry.cancelled):
                yield

    @contextmanager
    def session(self) -> Iterator[Workspace]:
        """Open the log and the working directory for a single-shard command; yield the prepared workspace."""
        self.artefacts.mkdir(parents=True, exist_ok=True)
        self.result.log_file = str(self.artefacts / "terraform.log")
        with self._log_and_directory():
            yield self.open_workspace()

    def _run(self, prerequisites: dict[str, Outcome]) -> None:
        context = self.context
        try:
            workspace = self.open_workspace()
            prerequisite_changed = any(isinstance(o.value, ShardResult) and o.value.status == APPLIED for o in prerequisites.values())
            # A planned dependent is flagged only for prerequisites of its own deployment file:
            # those are the ones it is written against, while other files of the account merely
            # come first in the schedule.
            same_file = f"{self.shard.deployment.id}/"
            pending = sorted(
                shard_id for shard_id, o in prerequisites.items()
                if shard_id.startswith(same_file) and isinstance(o.value, ShardResult) and o.value.status == PLANNED
            )

            if context.action == "apply":
                self._push_kept_errored_state()
                store = self._backup_store()
                saved = None if prerequisite_changed else self._usable_saved_plan(workspace)
                if saved is not None:
                    self.result.used_saved_plan = True
                    self.result.notes.append(f"applied the saved plan of run {saved['run_id']}, whose policy checks passed")
                    self.result.counts = ChangeCounts(**saved["counts"])
                    self.result.policy = saved.get("policy", {})
                    self.result.has_changes = True
                    try:
                        self._apply(Path(saved["plan_file"]), workspace, store)
                        return
                    except StalePlan:
                        self.result.used_saved_plan = False
                        self.result.notes.append("the saved plan was stale, so the shard was planned again")

                for attempt in range(STALE_PLAN_RETRIES + 1):
                    plan_file = self._plan(workspace)
                    if plan_file is None:
                        self.result.status = NO_CHANGES
                        self._record_good_configuration(store, workspace, only_if_missing=True)
                        return
                    self._check_policies()
                    try:
                        self._apply(plan_file, workspace, store)
                        return
                    except StalePlan:
                        if attempt == STALE_PLAN_RETRIES:
                            raise
                        # Another run applied to this state between our plan and our apply.
                        self.result.notes.append("the state changed after the plan (another run applied), so the shard was planned again")
                return

            plan_file = self._plan(workspace)
            self.result.status = PLANNED if plan_file else NO_CHANGES
            if pending and plan_file is not None:
                self.result.notes.append(f"re-plan after {', '.join(pending)} applies")
        finally:
            if self.runner is not None:
                self.result.commands = [{"command": r.command, "exit_code": r.exit_code, "duration": round(r.duration, 2)} for r in self.runner.results]

    def _init(self, workspace: Workspace) -> None:
        if not workspace.needs_init:
            return
        self._phase("init")
        self._init_in(self.runner, "terraform init")
        workspace.record_init()

    def _plan(self, workspace: Workspace) -> Path | None:
        """Plan into a file; return it when there are changes, None when there are none."""
        context = self.context
        self._phase("plan")
        plan_file = self.artefacts / "plan.tfplan"
        result = self.runner.run(
            plan_argv(context.toolchain.binary, workspace.var_file.name, str(plan_file), context.settings.terraform.lock_timeout),
            ok_codes=(0, PLAN_HAS_CHANGES),
        )
        raise_for_failure(result, f"{self.shard.id}: terraform plan")

        if result.exit_code != PLAN_HAS_CHANGES:
            plan_file.unlink(missing_ok=True)
            self._save_pointer(workspace, None, None)
            return None

        plan_file.chmod(0o600)
        self.result.plan_file = str(plan_file)
        self.result.has_changes = True
        self._phase("show")
        plan_json = self.artefacts / "plan.json"
        shown = self.runner.run(show_json_argv(context.toolchain.binary, str(plan_file)), stdout_path=plan_json)
        raise_for_failure(shown, f"{self.shard.id}: terraform show -json")
        self.result.plan_json_file = str(plan_json)
        document = json.loads(plan_json.read_text(encoding="utf-8"))
        # Values the plan marks sensitive are masked wherever they appear later in this shard's output.
        self.redactor.add_plan(document)
        self.context.redactor.add_plan(document)
        self.result.counts = count_changes(document)
        self._save_pointer(workspace, plan_file, self.result.counts)
        return plan_file

    def _check_policies(self) -> None:
        """Run OPA and the Checkov batch on this shard's plan; raise PolicyFailed when it does not pass."""
        stage = self.context.policy_stage
        if stage is None:
            return
        self._phase("policy")
        verdict = PolicyVerdict()
        plan_json = Path(self.result.plan_json_file)
        stage.evaluate_opa(plan_json, policy_metadata(self.shard), verdict)
        if self.context.checkov_batcher is not None:
            try:
                stage.record_checkov(self.context.checkov_batcher.submit(self.shard.id, plan_json), verdict)
            except Exception as error:  # noqa: BLE001 - a Checkov failure fails the shard, never passes it
                verdict.errors.append(f"Checkov: {error}")
        self.result.policy = verdict.as_dict()
        if not verdict.passed:
            raise PolicyFailed(verdict.describe())

    def _apply(self, plan_file: Path, workspace: Workspace, store: BackupStore) -> None:
        """Back up the state, apply, and roll back to the last good configuration when the apply fails."""
        before = self._pull_state("backup")
        backup = self._backup(store, before, "pre-apply")
        self.result.backup_id = backup.backup_id

        self._phase("apply")
        result = self.runner.run(apply_argv(self.context.toolchain.binary, str(plan_file), self.context.settings.terraform.lock_timeout))
        errored_before = (workspace.directory / ERRORED_STATE_FILE).exists()
        state_saved = self._settle_errored_state(workspace)
        try:
            if errored_before and state_saved and only_state_save_failed(result.output):
                # Every change was made; only the upload failed, and the push just fixed that.
                result.ok_codes = (result.exit_code,)
            raise_for_failure(result, f"{self.shard.id}: terraform apply")
        except (StalePlan, StateLockError):
            raise  # nothing was applied
        except TerraformError as error:
            if not state_saved:
                outcome = RollbackOutcome(NOT_ROLLED_BACK, target="-", backup_id=backup.backup_id, error="the state of the failed apply is not saved in the bucket yet, so a rollback would work from a wrong state")
                self.result.rollback = outcome.as_dict()
                raise ErroredStateBlocks(f"{self._errored_message()}\n{error}") from error
            outcome = self._roll_back(store, backup, before, workspace)
            self.result.rollback = outcome.as_dict()
            self.result.notes.append(outcome.describe())
            raise
        if not state_saved:
            raise ErroredStateBlocks(self._errored_message())
        self.result.status = APPLIED
        (shard_directory(self.context.settings, self.shard) / SAVED_PLAN_POINTER).unlink(missing_ok=True)
        self._record_good_configuration(store, workspace)

    # --- state backups and rollback --------------------------------------------------------------

    def _backup_store(self) -> BackupStore:
        settings = self.context.settings
        s3 = aws_client("s3", self.context.broker.state_credentials(), settings.state.region_for(self.shard.region), self.context.target)
        return BackupStore(s3, settings.state.bucket_for(self.shard.region), self.shard.state_key, settings.state.kms_key_id, self.shard.id)

    def _pull_state(self, purpose: str, runner: Runner | None = None) -> StateSnapshot:
        """Read the shard's current state through Terraform; its text never reaches the log."""
        private = self.artefacts / "private"
        private.mkdir(mode=0o700, exist_ok=True)
        pulled = private / f"{purpose}.tfstate"
        try:
            result = (runner or self.runner).run(state_pull_argv(self.context.toolchain.binary), stdout_path=pulled)
            raise_for_failure(result, f"{self.shard.id}: terraform state pull")
            return StateSnapshot.parse(pulled.read_bytes(), f"{self.shard.id}: terraform state pull")
        finally:
            pulled.unlink(missing_ok=True)

    def _backup(self, store: BackupStore, snapshot: StateSnapshot, reason: str, produced_by: tuple[bytes, dict] | None = None) -> Backup:
        if reason != "after-failed-apply":
            self._phase("backup")  # during a rollback the progress line keeps saying rollback
        metadata = {
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "run_id": self.context.run_id,
            "reason": reason,
            "shard": self.shard.id,
            "account_id": self.shard.account_id,
            "region": self.shard.region,
            "service": self.shard.service.name,
            "project": self.shard.project,
            "git_revision_of_run": self.context.git_revision,
        }
        backup = store.create(snapshot, new_backup_id(self.context.run_id, reason), metadata, produced_by)
        configuration = backup.metadata.get("configuration") or {}
        self._log(f"# backup {backup.backup_id}: serial {snapshot.serial}, {len(snapshot.addresses)} resource(s), configuration of run {configuration.get('run_id', '-')}")
        return backup

    def _record_good_configuration(self, store: BackupStore, workspace: Workspace, only_if_missing: bool = False) -> None:
        """Record the configuration just applied (or found without changes) as the last good one."""
        if only_if_missing and store.last_good() is not None:
            return
        bundle, digests = build_bundle(self.shard, workspace.directory, module_file_names(workspace.directory), self.context.settings.repo_root, self.context.git_revision)
        digests.update({"run_id": self.context.run_id, "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "inputs_digest": workspace.inputs_digest})
        store.record_good(bundle, digests)

    def _roll_back(self, store: BackupStore, backup: Backup, before: StateSnapshot, workspace: Workspace) -> RollbackOutcome:
        """Converge the shard to the configuration recorded with ``backup`` after a failed apply."""
        self._phase("rollback")
        self._rollback_from = len(self.runner.results)
        try:
            after = self._pull_state("after-failed-apply")
            created = sorted(set(after.addresses) - set(before.addresses))
            bundle, digests = build_bundle(self.shard, workspace.directory, module_file_names(workspace.directory), self.context.settings.repo_root, self.context.git_revision)
            digests.update({"run_id": self.context.run_id, "failed_apply": True})
            self._backup(store, after, "after-failed-apply", produced_by=(bundle, digests))
        except (TerraformError, BackupError) as error:
            return RollbackOutcome(ROLLBACK_FAILED, target="-", backup_id=backup.backup_id, error=f"cannot read the state the failed apply left: {error}")

        configuration = backup.metadata.get("configuration")
        bundle = store.configuration_of(backup) if configuration else None
        if bundle is not None:
            target = f"the configuration applied by run {configuration.get('run_id', '?')} (git {configuration.get('git_revision', '?')})"
            directory = prepare_rollback_directory(self.context.settings, self.shard, bundle, self.context.target.endpoint)
            destroy = False
        elif before.empty:
            target = "no resources (the failed apply was the shard's first)"
            directory = workspace.directory
            destroy = True
        else:
            return RollbackOutcome(
                NOT_ROLLED_BACK, target="-", backup_id=backup.backup_id, created_by_failed_apply=created,
                error=(f"no good configuration was recorded before this apply, so these resources stay as the failed apply left them: {', '.join(created) or 'none created'}; "
                       f"fix forward, or choose an earlier configuration with invoke rollback --shard {self.shard.id} --backup <id>"),
            )

        outcome = RollbackOutcome(ROLLED_BACK, target=target, backup_id=backup.backup_id, created_by_failed_apply=created)
        runner = self.runner if directory == workspace.directory else self._runner_in(directory)
        try:
            if directory != workspace.directory:
                self._init_in(runner)
            outcome.planned, outcome.not_converged, outcome.error = self.converge(runner, destroy=destroy)
        except TerraformError as error:
            outcome.status = ROLLBACK_FAILED
            outcome.error = self.redactor.text(error.headline)
            outcome.not_converged = [{"address": address, "actions": ["delete"]} for address in created]
        if outcome.error and outcome.status == ROLLED_BACK and outcome.not_converged:
            # Judged by the plan made after the failure: fewer pending changes means part of it worked.
            outcome.status = PARTLY_ROLLED_BACK if len(outcome.not_converged) < len(outcome.planned) else ROLLBACK_FAILED
        if runner is not self.runner:
            self.runner.results.extend(runner.results)
        return outcome

    def _runner_in(self, directory: Path) -> Runner:
        return Runner(cwd=directory, environment=self.runner.environment, registry=self.context.registry, timeout_seconds=self.runner.timeout_seconds, log_line=self._log)

    def _init_in(self, runner: Runner, what: str = "terraform init for the rollback") -> None:
        """Run ``terraform init`` in ``runner``'s directory."""
        if self.context.toolchain.init_needs_lock:
            # A shared plugin cache is not safe for parallel init, so init runs one at a time.
            with self.context.init_lock:
                result = runner.run(init_argv(self.context.toolchain.binary))
        else:
            result = runner.run(init_argv(self.context.toolchain.binary))
        raise_for_failure(result, f"{self.shard.id}: {what}")

    def converge(self, runner: Runner, destroy: bool = False, before_apply: Callable[[list[dict]], object] | None = None) -> tuple[list[dict], list[dict], str]:
        """Plan and apply in ``runner``'s directory; return planned changes, changes left, error.

        ``before_apply`` receives the planned changes first and may raise to stop before the apply.
        """
        binary = self.context.toolchain.binary
        lock_timeout = self.context.settings.terraform.lock_timeout
        private = self.artefacts / "private"
        private.mkdir(mode=0o700, exist_ok=True)
        plan_file = private / "converge.tfplan"
        plan_json = private / "converge-plan.json"

        def plan() -> list[dict]:
            result = runner.run(plan_argv(binary, VAR_FILE_NAME, str(plan_file), lock_timeout, destroy=destroy), ok_codes=(0, PLAN_HAS_CHANGES))
            raise_for_failure(result, f"{self.shard.id}: terraform plan ({'destroy' if destroy else 'converge'})")
            if result.exit_code != PLAN_HAS_CHANGES:
                return []
            try:
                shown = runner.run(show_json_argv(binary, str(plan_file)), stdout_path=plan_json)
                raise_for_failure(shown, f"{self.shard.id}: terraform show -json")
                document = json.loads(plan_json.read_text(encoding="utf-8"))
                self.redactor.add_plan(document)
                return planned_changes(document)
            finally:
                plan_json.unlink(missing_ok=True)

        try:
            planned = plan()
            if not planned:
                return [], [], ""
            if before_apply is not None:
                before_apply(planned)
            applied = runner.run(apply_argv(binary, str(plan_file), lock_timeout))
            if applied.ok:
                return planned, [], ""
            error = self.redactor.text(applied.tail(8))
            try:
                left = plan()
            except TerraformError:
                left = planned
            return planned, left, error
        finally:
            plan_file.unlink(missing_ok=True)

    # --- errored.tfstate -----------------------------------------------------------------------

    def _errored_store(self) -> ErroredStateStore:
        return ErroredStateStore.for_shard(self.context.settings.work_dir, f"{self.shard.account.name}/{self.shard.deployment.name}/{self.shard.service.name}")

    def _errored_message(self) -> str:
        marker = self._errored_store().marker or {}
        return (
            f"{self.shard.id}: Terraform could not save the state of run {marker.get('run_id', '?')} to the bucket; it is kept encrypted in "
            f"{marker.get('file', '?')} and further applies of this shard are blocked until it is pushed. Each apply tries to push it first; "
            f"to push it now run: invoke errored-state --shard {self.shard.id} --push"
        )

    def _settle_errored_state(self, workspace: Workspace) -> bool:
        """Push an errored.tfstate left by this apply, or keep it encrypted; return whether state is saved."""
        errored = workspace.directory / ERRORED_STATE_FILE
        if not errored.exists():
            return True
        errored.chmod(0o600)
        self._log("# terraform could not save the state (errored.tfstate): pushing it again")
        pushed = self.runner.run(state_push_argv(self.context.toolchain.binary, ERRORED_STATE_FILE, self.context.settings.terraform.lock_timeout))
        if pushed.ok:
            errored.unlink()
            self.result.notes.append("saving the state failed at first; errored.tfstate was pushed right after the apply")
            return True
        self._errored_store().keep(errored, self.context.run_id, pushed.tail(3))
        return False

    def _push_kept_errored_state(self) -> None:
        """Push a state kept from an earlier failed save; refuse to apply while that fails."""
        store = self._errored_store()
        marker = store.marker
        if marker is None:
            return
        self._phase("push errored state")
        clear = store.decrypt_to(self.runner.cwd / ERRORED_STATE_FILE)
        try:
            pushed = self.runner.run(state_push_argv(self.context.toolchain.binary, ERRORED_STATE_FILE, self.context.settings.terraform.lock_timeout))
        finally:
            clear.unlink(missing_ok=True)
        if not pushed.ok:
            raise ErroredStateBlocks(self._errored_message() + f"; the last push failed: {self.redactor.text(pushed.tail(3))}")
        store.clear()
        self.result.notes.append(f"pushed the state kept from run {marker.get('run_id', '?')}, whose save had failed")

    # --- saved plans ---------------------------------------------------------------------------

    def _save_pointer(self, workspace: Workspace, plan_file: Path | None, counts: ChangeCounts | None) -> None:
        pointer = workspace.directory / SAVED_PLAN_POINTER
        if plan_file is None:
            pointer.unlink(missing_ok=True)
            return
        record = {
            "run_id": self.context.run_id,
            "plan_file": str(plan_file),
            "inputs_digest": workspace.inputs_digest,
            "counts": counts.as_dict() if counts else {},
            "created": time.time(),
            "policy": self.result.policy,
        }
        pointer.write_text(json.dumps(record, indent=2), encoding="utf-8")

    def _usable_saved_plan(self, workspace: Workspace) -> dict | None:
        pointer = workspace.directory / SAVED_PLAN_POINTER
        if not pointer.exists():
            return None
        try:
            record = json.loads(pointer.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            return None
        if record.get("inputs_digest") != workspace.inputs_digest or not Path(record.get("plan_file", "")).exists():
            return None
        # A saved plan is applied as it is only when the plan run's policy stage passed it.
        if self.context.policy_stage is not None and record.get("policy", {}).get("status") not in ("passed", "passed with warnings"):
            return None
        return record


_ERROR_LINE = re.compile(r"^\s*(?:│\s*)?Error: (.*)$", re.MULTILINE)
_STATE_SAVE_ERROR = re.compile(r"Failed to (?:save|persist|upload) state", re.IGNORECASE)


def only_state_save_failed(output: str) -> bool:
    """True when every error Terraform printed is about saving the state, none about a resource."""
    errors = _ERROR_LINE.findall(output)
    return bool(errors) and all(_STATE_SAVE_ERROR.search(error) for error in errors)


def record_plan_policy(settings: Settings, shard: Shard, result: ShardResult, verdict: PolicyVerdict) -> None:
    """Store a plan run's policy verdict with the shard's result and its saved plan."""
    result.policy = verdict.as_dict()
    pointer = shard_directory(settings, shard) / SAVED_PLAN_POINTER
    if pointer.exists():
        record = json.loads(pointer.read_text(encoding="utf-8"))
        record["policy"] = result.policy
        pointer.write_text(json.dumps(record, indent=2), encoding="utf-8")
    if not verdict.passed:
        result.status = STATUS_FAILED
        result.error = verdict.describe()
