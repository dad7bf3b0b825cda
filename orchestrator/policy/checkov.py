"""Checkov scans of saved plan JSONs, run as a command-line tool from an environment of its own.

Checkov is never installed into the orchestrator's environment: it depends on
``bc-python-hcl2``, which installs a package named ``hcl2`` over python-hcl2's, and the
orchestrator needs python-hcl2 8.x. ``ensure_checkov`` builds a separate venv under the
tools folder, and ``run_checkov`` starts its ``checkov`` executable once for all plan files,
because each start costs about 3 s of imports.

Checkov runs offline. With ``--skip-download``, no API key and an isolated HOME it makes no
platform call, and ``CKV_SKIP_PACKAGE_UPDATE_CHECK`` stops its version check against PyPI.
Offline, Checkov 3.3.30 reports neither severities nor guideline URLs: both are ``null`` in
its JSON output, because they come from the Prisma Cloud platform.
"""

from __future__ import annotations

import fcntl
import fnmatch
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from ..errors import ConfigurationError, OrchestratorError

logger = logging.getLogger(__name__)

CHECKOV_VERSION = "3.3.30"

# An estimate with a wide margin: the install takes about 30 s with a fast package index.
# The limit only stops a pip that hangs on a dead network.
INSTALL_TIMEOUT_SECONDS = 1800

INSTALLED_MARKER = "orchestrator-installed.json"

# Severity names and order as in checkov/common/bridgecrew/severities.py (Checkov 3.3.30),
# which also maps MODERATE to MEDIUM and IMPORTANT to HIGH.
SEVERITY_LEVELS = {"INFO": 1, "LOW": 2, "MEDIUM": 3, "MODERATE": 3, "HIGH": 4, "IMPORTANT": 4, "CRITICAL": 5}

# Checkov reads its settings from these variables as well as from flags (CKV_SKIP_CHECK,
# BC_API_KEY, ...), so it gets an explicit environment with only what a scan needs.
OFFLINE_ENVIRONMENT = {
    # Without it Checkov queries pypi.org for a newer release at every start.
    "CKV_SKIP_PACKAGE_UPDATE_CHECK": "true",
    # Has the effect of --skip-download, which stops the mapping and guideline downloads.
    "BC_SKIP_MAPPING": "TRUE",
    "LOG_LEVEL": "WARNING",
    "LANG": "C.UTF-8",
}


class CheckovError(OrchestratorError):
    """Checkov could not be installed, or a scan crashed, timed out or printed invalid output."""


@dataclass(frozen=True)
class CheckovFinding:
    """One failed Checkov check on one resource of a plan."""

    check_id: str
    check_name: str
    resource_address: str  # full address, such as module.x.aws_s3_bucket.this["a"]
    severity: str | None  # None when Checkov reports none, which is always the case offline
    guideline: str | None
    soft_failed: bool


@dataclass
class CheckovResult:
    """The Checkov verdict on one shard's plan.

    ``failed_checks`` holds the failures that block the shard, ``soft_failed`` the ones that
    are only reported. ``error`` is set when the plan could not be scanned, and then
    ``passed`` is False.
    """

    passed: bool
    failed_checks: list[CheckovFinding] = field(default_factory=list)
    soft_failed: list[CheckovFinding] = field(default_factory=list)
    passed_count: int = 0
    error: str | None = None


# --- installation -------------------------------------------------------------------------


def ensure_checkov(tools_dir: Path, version: str = CHECKOV_VERSION) -> Path:
    """Install Checkov ``version`` into its own venv under ``tools_dir`` unless it is there.

    Returns the path of the venv's ``checkov`` executable. An installed environment of the
    same version is reused without calling pip. A file lock lets several processes call this
    at once, and only the first one installs. Raises CheckovError when the install fails.
    """
    env_dir = Path(tools_dir) / "checkov"
    executable = env_dir / "bin" / "checkov"
    if _installed_version(env_dir) == version:
        return executable

    env_dir.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(env_dir.parent / "checkov.lock"):
        # Another process may have finished the install while this one waited for the lock.
        if _installed_version(env_dir) == version:
            return executable
        _install(env_dir, version)
    return executable


def _installed_version(env_dir: Path) -> str | None:
    """Return the Checkov version recorded by a completed install, or None."""
    try:
        marker = json.loads((env_dir / INSTALLED_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None

    # A venv whose base Python was removed (for example by a pyenv upgrade) cannot start.
    if not (env_dir / "bin" / "python").exists() or not (env_dir / "bin" / "checkov").exists():
        return None
    return marker.get("checkov_version")


@contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    with open(path, "a+") as lock_file:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("waiting for another process that is installing Checkov (lock %s)", path)
            fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _install(env_dir: Path, version: str) -> None:
    """Create the venv at ``env_dir`` from scratch and pip-install ``checkov==version`` into it."""
    if env_dir.exists():
        logger.info("removing the Checkov environment at %s to install version %s", env_dir, version)
        shutil.rmtree(env_dir)

    log_path = env_dir.parent / "checkov-install.log"
    logger.info("installing Checkov %s into %s. The first install takes a minute or two (log: %s)", version, env_dir, log_path)
    started = time.monotonic()

    python = env_dir / "bin" / "python"
    steps = [
        [sys.executable, "-m", "venv", str(env_dir)],
        [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--no-input", f"checkov=={version}"],
    ]
    # pip keeps the caller's configuration (index, proxy, certificates), but PYTHONPATH and
    # PYTHONHOME must not leak the orchestrator's own packages into the new environment.
    environment = {name: value for name, value in os.environ.items() if name not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    with open(log_path, "w", encoding="utf-8") as log_file:
        for argv in steps:
            _run_install_step(argv, environment, log_file, log_path, env_dir, version)

    installed = _query_installed_version(python)
    if installed != version:
        shutil.rmtree(env_dir, ignore_errors=True)
        raise CheckovError(f"the Checkov install at {env_dir} reports version {installed!r} instead of {version}. The pip output is in {log_path}")

    marker = {"checkov_version": version, "python": sys.version.split()[0]}
    temporary = env_dir / (INSTALLED_MARKER + ".tmp")
    temporary.write_text(json.dumps(marker) + "\n", encoding="utf-8")
    temporary.replace(env_dir / INSTALLED_MARKER)
    logger.info("installed Checkov %s in %.0f s", version, time.monotonic() - started)


def _run_install_step(argv: list[str], environment: dict[str, str], log_file: Any, log_path: Path, env_dir: Path, version: str) -> None:
    log_file.write(f"$ {' '.join(argv)}\n")
    log_file.flush()
    try:
        completed = subprocess.run(argv, stdout=log_file, stderr=subprocess.STDOUT, env=environment, timeout=INSTALL_TIMEOUT_SECONDS, check=False)
    except subprocess.TimeoutExpired:
        shutil.rmtree(env_dir, ignore_errors=True)
        raise CheckovError(
            f"installing Checkov {version} timed out after {INSTALL_TIMEOUT_SECONDS} s ({argv[0]} {' '.join(argv[1:4])}). "
            f"Check that pip can reach its package index, then run again. Log: {log_path}"
        ) from None

    if completed.returncode != 0:
        shutil.rmtree(env_dir, ignore_errors=True)
        raise CheckovError(
            f"installing Checkov {version} failed: {' '.join(argv[:4])} exited with code {completed.returncode}. "
            f"Check that pip can reach its package index and that checkov=={version} exists there, then run again "
            f"(the partial environment at {env_dir} was removed).\n{_tail(log_path)}"
        )


def _query_installed_version(python: Path) -> str | None:
    # Reads the package metadata only: importing checkov itself would take seconds.
    completed = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('checkov'))"],
        capture_output=True, text=True, check=False, timeout=60,
    )
    return completed.stdout.strip() if completed.returncode == 0 else None


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join("  " + line for line in text.rstrip().splitlines()[-lines:])


# --- scanning -----------------------------------------------------------------------------


def run_checkov(
    checkov: Path,
    plans: Mapping[str, Path],
    skip_checks: Iterable[str] = (),
    soft_fail_checks: Iterable[str] = (),
    hard_fail_threshold: str | None = None,
    timeout: float = 600,
) -> dict[str, CheckovResult]:
    """Scan every plan JSON in ``plans`` (shard id to path) with one Checkov process.

    ``skip_checks`` are not run at all. A failure of a check in ``soft_fail_checks`` (IDs,
    ``*`` wildcards allowed) is reported without failing the shard. ``hard_fail_threshold``
    (INFO, LOW, MEDIUM, HIGH or CRITICAL) soft-fails findings whose severity is lower.
    Offline Checkov reports no severity, so the threshold then applies to nothing and every
    finding not listed in ``soft_fail_checks`` fails hard.

    A plan that is not valid plan JSON, or that Checkov cannot parse, gets a result with
    ``error`` set. A crash, a timeout or output that is not Checkov's JSON raises CheckovError
    for the whole run.
    """
    skip_checks = _validate_check_ids(skip_checks, "skip_checks")
    soft_fail_checks = _validate_check_ids(soft_fail_checks, "soft_fail_checks")
    threshold_level = _severity_level_of_threshold(hard_fail_threshold)

    results: dict[str, CheckovResult] = {}
    shards_by_path: dict[Path, list[str]] = {}
    addresses_by_path: dict[Path, set[str]] = {}
    for shard_id, plan_path in plans.items():
        resolved = Path(plan_path).resolve()
        try:
            addresses = _read_plan_addresses(resolved)
        except ValueError as error:
            results[shard_id] = CheckovResult(passed=False, error=str(error))
            continue
        shards_by_path.setdefault(resolved, []).append(shard_id)
        addresses_by_path[resolved] = addresses

    if not shards_by_path:
        return results

    reports = _run_checkov_process(Path(checkov), list(shards_by_path), skip_checks, timeout)

    scanned = {path: CheckovResult(passed=True) for path in shards_by_path}
    findings_without_severity = 0
    for report in reports:
        report_results = report.get("results", {})

        for reported_path in report_results.get("parsing_errors", []):
            path = Path(reported_path).resolve()
            if path in scanned:
                scanned[path].error = f"Checkov could not parse the plan file {path}"

        for check in report_results.get("passed_checks", []):
            path = _reported_path(check)
            if path in scanned:
                scanned[path].passed_count += 1

        for check in report_results.get("failed_checks", []):
            path = _reported_path(check)
            if path not in scanned:
                raise CheckovError(f"Checkov reported check {check.get('check_id')} failed on {path}, which is not one of the plan files it was given")
            finding = _make_finding(check, addresses_by_path[path], soft_fail_checks, threshold_level)
            if finding.severity is None:
                findings_without_severity += 1
            target = scanned[path].soft_failed if finding.soft_failed else scanned[path].failed_checks
            target.append(finding)

    if threshold_level is not None and findings_without_severity:
        logger.warning(
            "hard_fail_threshold %s does not apply to %d Checkov finding(s) without a severity "
            "(Checkov reports severities only with a platform API key). They fail hard unless listed in soft_fail_checks",
            hard_fail_threshold, findings_without_severity,
        )

    for path, result in scanned.items():
        result.passed = result.error is None and not result.failed_checks
        for shard_id in shards_by_path[path]:
            results[shard_id] = result
    return results


def _validate_check_ids(check_ids: Iterable[str], setting: str) -> tuple[str, ...]:
    """Return ``check_ids`` as a tuple, raising ConfigurationError on entries Checkov would misread."""
    if isinstance(check_ids, str):
        raise ConfigurationError(f"{setting} must be a list of check IDs, not the string {check_ids!r}")

    validated = []
    for check_id in check_ids:
        # Checkov reads a severity name in --skip-check as "this severity and lower", which
        # offline matches nothing, so severities belong in the threshold.
        if check_id.upper() in SEVERITY_LEVELS:
            raise ConfigurationError(f"{setting} contains the severity {check_id!r}. List check IDs such as CKV_AWS_18 and set hard_fail_threshold for severities")
        if not check_id or any(character in check_id for character in ", \t\n"):
            raise ConfigurationError(f"{setting} contains the invalid check ID {check_id!r}. Use one ID such as CKV_AWS_18 per entry")
        validated.append(check_id)
    return tuple(validated)


def _severity_level_of_threshold(threshold: str | None) -> int | None:
    if threshold is None:
        return None
    level = SEVERITY_LEVELS.get(threshold.upper())
    if level is None:
        raise ConfigurationError(f"invalid Checkov hard_fail_threshold {threshold!r}. Use one of INFO, LOW, MEDIUM, HIGH, CRITICAL")
    return level


def _read_plan_addresses(path: Path) -> set[str]:
    """Return the addresses of all resources in a plan JSON, raising ValueError when it is not one."""
    # Checkov silently skips files with another suffix, which would read as a pass.
    if path.suffix != ".json":
        raise ValueError(f"plan file {path} does not end in .json, and Checkov scans only .json files")
    try:
        plan = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ValueError(f"cannot read plan file {path}: {error.strerror}") from None
    except ValueError as error:
        raise ValueError(f"plan file {path} is not valid JSON: {error}") from None

    # Checkov parses any JSON and finds no resources in one that is not a plan, which would
    # also read as a pass. These two keys are in every `terraform show -json` plan output.
    if not isinstance(plan, dict) or "format_version" not in plan or "terraform_version" not in plan:
        raise ValueError(f"{path} is not a Terraform plan JSON (output of terraform show -json): format_version or terraform_version is missing")

    # Checkov 3.3.30 crashes the whole scan on a planned_values that is not an object, so a
    # malformed plan is rejected here and fails only its own shard.
    planned_values = plan.get("planned_values", {})
    resource_changes = plan.get("resource_changes", [])
    if not isinstance(planned_values, dict) or not isinstance(planned_values.get("root_module", {}), dict) or not isinstance(resource_changes, list):
        raise ValueError(f"plan file {path} is malformed: planned_values.root_module must be an object and resource_changes a list")

    addresses = {change["address"] for change in resource_changes if isinstance(change, dict) and "address" in change}
    modules = [planned_values.get("root_module", {})]
    while modules:
        module = modules.pop()
        if not isinstance(module, dict):
            raise ValueError(f"plan file {path} is malformed: a module in planned_values is not an object")
        addresses.update(resource["address"] for resource in module.get("resources", []) if isinstance(resource, dict) and "address" in resource)
        modules.extend(module.get("child_modules", []))
    return addresses


def _run_checkov_process(checkov: Path, plan_paths: list[Path], skip_checks: tuple[str, ...], timeout: float) -> list[dict[str, Any]]:
    """Run Checkov once over ``plan_paths`` and return its reports, raising CheckovError on any failure."""
    argv = [
        str(checkov),
        "--framework", "terraform_plan",
        "--output", "json",
        # Checkov then exits with 0 whenever the scan completes, so any other code is a crash.
        "--soft-fail",
        "--skip-download",
        # Drops the code blocks. Not --quiet, because that also drops the passed checks.
        "--compact",
    ]
    if skip_checks:
        argv += ["--skip-check", ",".join(skip_checks)]
    for path in plan_paths:
        argv += ["--file", str(path)]

    with tempfile.TemporaryDirectory(prefix="orchestrator-checkov-") as scratch:
        # HOME and the working directory are empty folders, so that Checkov reads no
        # .checkov.yaml and no ~/.bridgecrew/credentials of the caller.
        environment = {
            **OFFLINE_ENVIRONMENT,
            "PATH": f"{checkov.parent}{os.pathsep}{os.defpath}",
            "HOME": scratch,
            "TMPDIR": scratch,
        }
        logger.info("running Checkov on %d plan file(s)", len(plan_paths))
        started = time.monotonic()
        exit_code, stdout, stderr = _run_with_timeout(argv, scratch, environment, timeout, len(plan_paths))
        logger.info("Checkov finished in %.1f s with exit code %d", time.monotonic() - started, exit_code)

    if exit_code != 0:
        raise CheckovError(f"Checkov exited with code {exit_code} while scanning {len(plan_paths)} plan file(s):\n{_last_lines(stderr or stdout)}")

    try:
        output = json.loads(stdout)
    except ValueError:
        raise CheckovError(f"Checkov printed output that is not JSON: {stdout[:300]!r}\n{_last_lines(stderr)}") from None

    # One report per framework, and a list when there are several. When no file contains a
    # resource, Checkov prints only a summary object without "results".
    reports = output if isinstance(output, list) else [output]
    if not all(isinstance(report, dict) for report in reports):
        raise CheckovError(f"Checkov printed JSON of an unexpected shape: {stdout[:300]!r}")
    return [report for report in reports if "results" in report]


def _run_with_timeout(argv: list[str], cwd: str, environment: dict[str, str], timeout: float, file_count: int) -> tuple[int, str, str]:
    # A session of its own lets a timeout kill Checkov's worker processes too, which would
    # otherwise keep the pipes open.
    process = subprocess.Popen(argv, cwd=cwd, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise CheckovError(f"Checkov timed out after {timeout:g} s scanning {file_count} plan file(s). Raise the timeout or scan fewer plans at once") from None
    except BaseException:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise
    return process.returncode, stdout, stderr


def _last_lines(text: str, lines: int = 20) -> str:
    return "\n".join("  " + line for line in text.rstrip().splitlines()[-lines:])


def _reported_path(check: dict[str, Any]) -> Path:
    # Checkov reports the real path of each file it was given (it calls os.path.realpath).
    return Path(check.get("file_abs_path") or check.get("file_path", "")).resolve()


def _make_finding(check: dict[str, Any], plan_addresses: set[str], soft_fail_checks: tuple[str, ...], threshold_level: int | None) -> CheckovFinding:
    check_id = check.get("check_id", "")
    severity = check.get("severity") or None

    soft_failed = any(fnmatch.fnmatchcase(check_id, pattern) for pattern in soft_fail_checks)
    if threshold_level is not None and severity is not None:
        # An unknown severity name counts as the highest level, so it fails hard.
        severity_level = SEVERITY_LEVELS.get(str(severity).upper(), max(SEVERITY_LEVELS.values()))
        if severity_level < threshold_level:
            soft_failed = True

    return CheckovFinding(
        check_id=check_id,
        check_name=check.get("check_name", ""),
        resource_address=_full_address(check, plan_addresses),
        severity=severity,
        guideline=check.get("guideline") or None,
        soft_failed=soft_failed,
    )


def _full_address(check: dict[str, Any], plan_addresses: set[str]) -> str:
    """Return the full resource address of a finding, module path included.

    Checkov 3.3.30 reports the plan's own address (``module.a.module.b.type.name["key"]``) as
    ``resource_address`` and ``resource``. When a version reports an address without the
    module path instead, the only plan address that ends with it is used.
    """
    # The checked entity has the form {resource type: {name: {..., "__address__": address}}}.
    entity_address = None
    entity = check.get("check_result", {}).get("entity") or {}
    for attributes_by_name in entity.values():
        if not isinstance(attributes_by_name, dict):
            continue
        for attributes in attributes_by_name.values():
            if isinstance(attributes, dict) and attributes.get("__address__"):
                entity_address = attributes["__address__"]

    address = check.get("resource_address") or entity_address or check.get("resource", "")
    if address in plan_addresses:
        return address

    candidates = [known for known in plan_addresses if known.endswith("." + address)]
    if len(candidates) == 1:
        return candidates[0]
    # NOTE: provider blocks (such as aws.default for CKV_AWS_41) are not resources and keep
    # Checkov's name, and so does an address that matches several modules.
    return address
