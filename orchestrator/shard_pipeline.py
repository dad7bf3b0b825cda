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
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .credentials import AwsTarget, CredentialBroker
from .discovery import Shard
from .errors import OrchestratorError
from .plan_summary import ChangeCounts, count_changes
from .policy.batching import CheckovBatcher
from .policy.stage import PolicyFailed, PolicyStage, PolicyVerdict
from .redaction import Redactor
from .scheduler import FAILED, SKIPPED, SUCCEEDED, Outcome
from .settings import Settings
from .terraform import (
    PLAN_HAS_CHANGES,
    Interrupted,
    ProcessRegistry,
    Runner,
    StalePlan,
    TerraformError,
    apply_argv,
    init_argv,
    plan_argv,
    raise_for_failure,
    show_json_argv,
)
from .toolchain import Toolchain
from .workspace import Workspace, prepare_workspace, shard_directory

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
        self.redactor = Redactor()
        self._log_handle = None

    # --- entry point ---------------------------------------------------------------------------

    def run(self, prerequisites: dict[str, Outcome]) -> Outcome:
        started = time.monotonic()
        self.artefacts.mkdir(parents=True, exist_ok=True)
        log_path = self.artefacts / "terraform.log"
        self.result.log_file = str(log_path)
        if self.context.checkov_batcher is not None:
            self.context.checkov_batcher.enter()
        try:
            with open(log_path, "a", encoding="utf-8") as self._log_handle:
                self._run(prerequisites)
        except Interrupted as error:
            self.result.status = INTERRUPTED
            self.result.error = str(error)
        except TerraformError as error:
            self._fail(error, prerequisites)
        except OrchestratorError as error:
            self.result.status = STATUS_FAILED
            self.result.error = str(error)
        except Exception as error:  # noqa: BLE001 - reported as this shard's failure, never a crash of the run
            logger.exception("internal error in shard %s", self.shard.id)
            self.result.status = STATUS_FAILED
            self.result.error = f"internal error: {type(error).__name__}: {error}"
        finally:
            if self.context.checkov_batcher is not None:
                self.context.checkov_batcher.leave()
            self.result.duration = time.monotonic() - started

        if self.result.status in (NO_CHANGES, PLANNED, APPLIED, WAITING):
            return Outcome(SUCCEEDED, self.result.error, self.result)
        if self.result.status == INTERRUPTED:
            return Outcome(SKIPPED, self.result.error, self.result)
        return Outcome(FAILED, self.result.error, self.result)

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

    def _run(self, prerequisites: dict[str, Outcome]) -> None:
        context = self.context
        self._phase("prepare")
        workspace = prepare_workspace(self.shard, context.settings, context.target.endpoint, context.toolchain.cli_config_path.read_text(encoding="utf-8"))
        credentials_file = context.broker.credentials_file(self.shard.account.name, self.shard.account.deploy_role_arn)
        runner = Runner(
            cwd=workspace.directory,
            environment=shard_environment(context, credentials_file),
            registry=context.registry,
            timeout_seconds=context.settings.terraform.command_timeout_minutes * 60,
            log_line=self._log,
        )
        self.runner = runner

        try:
            self._init(workspace)
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
                saved = None if prerequisite_changed else self._usable_saved_plan(workspace)
                if saved is not None:
                    self.result.used_saved_plan = True
                    self.result.notes.append(f"applied the saved plan of run {saved['run_id']}, whose policy checks passed")
                    self.result.counts = ChangeCounts(**saved["counts"])
                    self.result.policy = saved.get("policy", {})
                    self.result.has_changes = True
                    try:
                        self._apply(Path(saved["plan_file"]))
                        return
                    except StalePlan:
                        self.result.used_saved_plan = False
                        self.result.notes.append("the saved plan was stale, so the shard was planned again")

                plan_file = self._plan(workspace)
                if plan_file is None:
                    self.result.status = NO_CHANGES
                    return
                self._check_policies()
                self._apply(plan_file)
                return

            plan_file = self._plan(workspace)
            self.result.status = PLANNED if plan_file else NO_CHANGES
            if pending and plan_file is not None:
                self.result.notes.append(f"re-plan after {', '.join(pending)} applies")
        finally:
            self.result.commands = [{"command": r.command, "exit_code": r.exit_code, "duration": round(r.duration, 2)} for r in runner.results]

    def _init(self, workspace: Workspace) -> None:
        if not workspace.needs_init:
            return
        self._phase("init")
        if self.context.toolchain.init_needs_lock:
            # A shared plugin cache is not safe for parallel init, so init runs one at a time.
            with self.context.init_lock:
                result = self.runner.run(init_argv(self.context.toolchain.binary))
        else:
            result = self.runner.run(init_argv(self.context.toolchain.binary))
        raise_for_failure(result, f"{self.shard.id}: terraform init")
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
        self.result.counts = count_changes(json.loads(plan_json.read_text(encoding="utf-8")))
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

    def _apply(self, plan_file: Path) -> None:
        self._phase("apply")
        result = self.runner.run(apply_argv(self.context.toolchain.binary, str(plan_file), self.context.settings.terraform.lock_timeout))
        raise_for_failure(result, f"{self.shard.id}: terraform apply")
        self.result.status = APPLIED
        (shard_directory(self.context.settings, self.shard) / SAVED_PLAN_POINTER).unlink(missing_ok=True)

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
