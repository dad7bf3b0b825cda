"""The only place that starts Terraform: argv builders, one runner, typed failures.

Every command runs with an explicit environment, ``-input=false -no-color``, its output
streamed line by line to the shard's log (through the redactor) and captured at the same time
from one pipe, so nothing can deadlock. Ctrl-C never kills Terraform first: the runner forwards
SIGINT to each running Terraform and gives it time to release its state lock.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from .errors import ConfigurationError, OrchestratorError

logger = logging.getLogger(__name__)

# Exit code of ``plan -detailed-exitcode`` when the plan has changes (0: none, 1: error).
PLAN_HAS_CHANGES = 2

INTERRUPT_GRACE_SECONDS = 60

ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


@dataclass
class CommandResult:
    argv: list[str]
    cwd: str
    exit_code: int
    output: str
    duration: float
    ok_codes: tuple[int, ...] = (0,)

    @property
    def ok(self) -> bool:
        return self.exit_code in self.ok_codes

    @property
    def command(self) -> str:
        """Return the binary's name and subcommand, such as ``terraform plan`` or ``terraform state pull``."""
        words = 3 if self.argv[1:2] == ["state"] else 2
        return " ".join([Path(self.argv[0]).name, *self.argv[1:words]])

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.output.rstrip().splitlines()[-lines:])


class TerraformError(OrchestratorError):
    """A Terraform command failed; ``result`` carries its argv, exit code and output."""

    def __init__(self, headline: str, result: CommandResult | None = None):
        self.headline = headline
        self.result = result
        super().__init__(headline)

    def __str__(self) -> str:
        if self.result is None:
            return self.headline
        return f"{self.headline}\n  command: {' '.join(self.result.argv)}\n  exit code: {self.result.exit_code}\n{_indent(self.result.tail())}"


class StateLockError(TerraformError):
    """The shard's state lock is held by someone else."""

    def __init__(self, result: CommandResult, lock_info: dict[str, str]):
        self.lock_info = lock_info
        holder = lock_info.get("Who", "unknown holder")
        headline = (
            f"state lock is held (ID {lock_info.get('ID', '?')}, by {holder}, since {lock_info.get('Created', '?')}, "
            f"operation {lock_info.get('Operation', '?')}); wait for that run to finish, or if it died, "
            "release the lock with invoke unlock"
        )
        super().__init__(headline, result)


class ProviderNotFound(TerraformError):
    """A provider is neither in the configured mirror nor reachable."""


class BackendMissing(TerraformError):
    """The state bucket or lock table does not exist."""


class StalePlan(TerraformError):
    """A saved plan no longer matches the state; it must be planned again."""


class Interrupted(OrchestratorError):
    """The run was interrupted (Ctrl-C or SIGTERM) before this command could start or finish."""


class TerraformNotFound(ConfigurationError):
    """The terraform (or tofu) binary is not on PATH."""


def _indent(text: str) -> str:
    return "\n".join(f"    {line}" for line in text.splitlines())


def resolve_binary(name: str) -> str:
    """Return the absolute path of ``name`` (a command on PATH or a path), or raise TerraformNotFound."""
    if os.sep in name:
        if os.access(name, os.X_OK):
            return str(Path(name).resolve())
        raise TerraformNotFound(f"terraform binary {name} does not exist or is not executable; fix terraform.binary in orchestrator.toml")
    found = shutil.which(name)
    if found is None:
        raise TerraformNotFound(
            f"{name} not found on PATH; install Terraform 1.10 or newer (or OpenTofu and set terraform.binary = \"tofu\" "
            "in orchestrator.toml), or set terraform.binary to its path"
        )
    return found


def binary_version(binary: str) -> str:
    """Return the version reported by ``binary version -json``, e.g. ``1.11.4``."""
    import json

    completed = subprocess.run([binary, "version", "-json"], capture_output=True, text=True, timeout=60, env={"PATH": os.environ.get("PATH", ""), "CHECKPOINT_DISABLE": "1"})
    try:
        return json.loads(completed.stdout)["terraform_version"]
    except (ValueError, KeyError):
        return completed.stdout.strip().splitlines()[0] if completed.stdout.strip() else "unknown"


# --- argv builders: pure functions, tested by tables -------------------------------------------

def init_argv(binary: str) -> list[str]:
    return [binary, "init", "-input=false", "-no-color", "-reconfigure"]


def plan_argv(binary: str, var_file: str, plan_file: str, lock_timeout: str, refresh_only: bool = False, destroy: bool = False) -> list[str]:
    argv = [binary, "plan", "-input=false", "-no-color", "-detailed-exitcode", f"-lock-timeout={lock_timeout}", f"-var-file={var_file}", f"-out={plan_file}"]
    if refresh_only:
        argv.append("-refresh-only")
    if destroy:
        argv.append("-destroy")
    return argv


def show_json_argv(binary: str, plan_file: str) -> list[str]:
    return [binary, "show", "-json", "-no-color", plan_file]


def apply_argv(binary: str, plan_file: str, lock_timeout: str) -> list[str]:
    return [binary, "apply", "-input=false", "-no-color", "-auto-approve", f"-lock-timeout={lock_timeout}", plan_file]


def state_pull_argv(binary: str) -> list[str]:
    return [binary, "state", "pull"]


def state_push_argv(binary: str, state_file: str, lock_timeout: str) -> list[str]:
    # Never -force: Terraform then refuses a state of another lineage or an older serial.
    return [binary, "state", "push", f"-lock-timeout={lock_timeout}", state_file]


def force_unlock_argv(binary: str, lock_id: str) -> list[str]:
    return [binary, "force-unlock", "-force", lock_id]


# --- running processes --------------------------------------------------------------------------

@dataclass
class ProcessRegistry:
    """Running Terraform processes of this orchestrator, so that an interrupt reaches each one."""

    cancelled: threading.Event = field(default_factory=threading.Event)
    _processes: set = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, process: subprocess.Popen) -> None:
        with self._lock:
            self._processes.add(process)

    def discard(self, process: subprocess.Popen) -> None:
        with self._lock:
            self._processes.discard(process)

    def running(self) -> list[subprocess.Popen]:
        with self._lock:
            return [p for p in self._processes if p.poll() is None]

    def interrupt(self) -> int:
        """Stop new commands and forward SIGINT to every running one; return how many got it."""
        self.cancelled.set()
        processes = self.running()
        for process in processes:
            _signal_group(process, signal.SIGINT)
        return len(processes)

    def escalate(self) -> None:
        """Send SIGTERM to commands that outlived the interrupt grace period."""
        for process in self.running():
            _signal_group(process, signal.SIGTERM)


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:
        pass


class Runner:
    """Run commands for one shard: its working directory, environment and log."""

    def __init__(
        self,
        cwd: Path,
        environment: dict[str, str],
        registry: ProcessRegistry,
        timeout_seconds: float,
        log_line: Callable[[str], None],
    ):
        self.cwd = cwd
        self.environment = environment
        self.registry = registry
        self.timeout_seconds = timeout_seconds
        self.log_line = log_line
        self.results: list[CommandResult] = []

    def run(self, argv: list[str], ok_codes: Iterable[int] = (0,), stdout_path: Path | None = None) -> CommandResult:
        """Run ``argv``, stream its output to the log and return the result, failed or not.

        With ``stdout_path``, standard output goes to that file (mode 0600) and only standard
        error is logged. ``show -json`` uses it because its output contains secrets.
        """
        if self.registry.cancelled.is_set():
            raise Interrupted(f"not started because the run was interrupted: {' '.join(argv[:2])}")

        self.log_line(f"$ {' '.join(argv)}")
        started = time.monotonic()
        stdout_handle = None
        if stdout_path is not None:
            descriptor = os.open(stdout_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            stdout_handle = os.fdopen(descriptor, "wb")

        try:
            process = subprocess.Popen(
                argv,
                cwd=self.cwd,
                env=self.environment,
                stdin=subprocess.DEVNULL,
                stdout=stdout_handle if stdout_handle else subprocess.PIPE,
                stderr=subprocess.PIPE if stdout_handle else subprocess.STDOUT,
                start_new_session=True,
            )
        except FileNotFoundError as error:
            raise TerraformNotFound(f"{argv[0]} could not be started: {error}") from error
        finally:
            if stdout_handle:
                stdout_handle.close()

        self.registry.add(process)
        timer = threading.Timer(self.timeout_seconds, self._time_out, args=(process,))
        timer.daemon = True
        timer.start()
        captured: list[str] = []
        try:
            stream = process.stderr if stdout_path is not None else process.stdout
            for raw in stream:
                # Some subcommands (state push) colour their output even without a terminal.
                line = ANSI_ESCAPE.sub("", raw.decode("utf-8", errors="replace").rstrip("\r\n"))
                captured.append(line)
                self.log_line(line)
            exit_code = process.wait()
        finally:
            timer.cancel()
            self.registry.discard(process)

        result = CommandResult(argv=list(argv), cwd=str(self.cwd), exit_code=exit_code, output="\n".join(captured), duration=time.monotonic() - started, ok_codes=tuple(ok_codes))
        self.results.append(result)
        self.log_line(f"# exit code {exit_code} after {result.duration:.1f} s")
        if self.registry.cancelled.is_set() and not result.ok:
            raise Interrupted(f"{result.command} stopped by the interrupt")
        return result

    def _time_out(self, process: subprocess.Popen) -> None:
        self.log_line(f"# timed out after {self.timeout_seconds:.0f} s: sending SIGINT")
        _signal_group(process, signal.SIGINT)
        try:
            process.wait(timeout=INTERRUPT_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            _signal_group(process, signal.SIGTERM)


# --- understanding failures ---------------------------------------------------------------------

_LOCK_FIELD = re.compile(r"^\s*(ID|Path|Operation|Who|Version|Created|Info):\s*(.*)$")


def parse_lock_info(output: str) -> dict[str, str]:
    """Return the fields of Terraform's "Lock Info" block, or an empty dict."""
    if "Error acquiring the state lock" not in output:
        return {}
    info: dict[str, str] = {}
    for line in output.splitlines():
        match = _LOCK_FIELD.match(line)
        if match and match.group(1) not in info:
            info[match.group(1)] = match.group(2).strip()
    return info


def raise_for_failure(result: CommandResult, what: str) -> None:
    """Raise the most specific TerraformError for a failed result; do nothing when it succeeded."""
    if result.ok:
        return
    output = result.output
    lock_info = parse_lock_info(output)
    if lock_info:
        raise StateLockError(result, lock_info)
    if "Saved plan is stale" in output or "plan file is stale" in output.lower():
        raise StalePlan(f"{what}: the saved plan is stale because the state changed since it was made", result)
    if re.search(r"(Failed to query available provider packages|Failed to install provider|provider .* was not found in any of the search locations|could not find required providers)", output, re.IGNORECASE):
        raise ProviderNotFound(
            f"{what}: a provider is not available; put it in the provider mirror (terraform.provider_mirror in "
            "orchestrator.toml, or one of the auto-detected folders) or allow registry access",
            result,
        )
    if re.search(r"(NoSuchBucket|S3 bucket .* does not exist|ResourceNotFoundException.*[Tt]able)", output):
        raise BackendMissing(f"{what}: the state bucket or lock table does not exist; create it with invoke bootstrap (or invoke sandbox.up)", result)
    raise TerraformError(f"{what} failed", result)
