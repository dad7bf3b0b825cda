"""Benchmarks on the sandbox, written to docs/benchmarks.md with the machine and commands.

Parallel against sequential: N accounts with one shard each are applied by the orchestrator
and by the loop the orchestrator replaces (``terraform init``, ``plan -out``, ``apply`` per
folder, one folder after the other, and the same loop with all folders at once). Every
variant starts from an empty sandbox. CPU seconds are those of all child processes, so
``CPU seconds ÷ cores`` is the floor no amount of parallelism can beat on this machine.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from . import sandbox
from .settings import load_settings
from .terraform import binary_version, resolve_binary

TEMPLATE_ROOT = Path(__file__).resolve().parent.parent
BENCH_ACCOUNTS = 5
BUCKETS_PER_ACCOUNT = 3


@dataclass
class Measurement:
    key: str  # orchestrator, orchestrator-again, loop-sequential, loop-sequential-again, loop-parallel
    name: str
    command: str
    wall_seconds: float
    cpu_seconds: float
    detail: str = ""


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _write_bench_repo(root: Path, port: int, latency_ms: int, accounts: int) -> Path:
    """Create a repository with ``accounts`` accounts, each with one deployment of S3 buckets."""
    repo = root / "repo"
    shutil.copytree(TEMPLATE_ROOT / "modules", repo / "modules", ignore=shutil.ignore_patterns(".terraform"))
    shutil.copytree(TEMPLATE_ROOT / "policies", repo / "policies")
    # The template's policy settings (Checkov skip and soft-fail lists) apply to the bench too.
    template_settings = (TEMPLATE_ROOT / "orchestrator.toml").read_text(encoding="utf-8")
    (repo / "orchestrator.toml").write_text(f"{template_settings}\n[sandbox]\nport = {port}\nlatency_ms = {latency_ms}\n", encoding="utf-8")
    for index in range(1, accounts + 1):
        account_id = f"{100000000000 + index}"
        folder = repo / "Accounts" / f"bench-{index}"
        folder.mkdir(parents=True)
        (folder / "account.json").write_text(json.dumps({
            "name": f"bench-{index}",
            "account_id": account_id,
            "environment": "bench",
            "regions": ["eu-west-1"],
            "default_region": "eu-west-1",
            "deploy_role_arn": f"arn:aws:iam::{account_id}:role/terraform-deployer",
        }), encoding="utf-8")
        buckets = "\n".join(f"  data{n} = {{ versioning = true }}" for n in range(BUCKETS_PER_ACCOUNT))
        (folder / "app.tfvars").write_text(f'project = "bench"\ntags = {{ Owner = "bench", CostCentre = "CC-0" }}\ns3_buckets = {{\n{buckets}\n}}\n', encoding="utf-8")
    return repo


def _orchestrator(repo: Path, *argv: str) -> tuple[int, dict]:
    from .cli import main

    sink = io.StringIO()
    with redirect_stdout(sink), redirect_stderr(sink):
        code = main(["--repo", str(repo), *argv])
    report = json.loads((repo / ".orchestrator" / "runs" / "latest" / "report.json").read_text(encoding="utf-8"))
    if code != 0:
        raise RuntimeError(f"orchestrator {' '.join(argv)} exited with {code}:\n{sink.getvalue()[-3000:]}")
    return code, report


def _restart_sandbox(repo: Path) -> None:
    settings = load_settings(repo)
    sandbox.down(settings)
    sandbox.up(settings)


def _loop_folders(repo: Path, destination: Path) -> list[Path]:
    """Copy each shard's prepared working directory (module, backend, provider, values) as a plain folder."""
    folders = []
    for shard_dir in sorted((repo / ".orchestrator" / "shards").glob("*/*/*")):
        target = destination / shard_dir.parent.parent.name
        shutil.copytree(shard_dir, target, ignore=shutil.ignore_patterns(".terraform", ".terraform.lock.hcl", ".orchestrator-*"))
        folders.append(target)
    return folders


def _loop_script(folders: list[Path], parallel: bool) -> str:
    step = 'cd "$d" && terraform init -input=false -no-color >/dev/null && terraform plan -input=false -no-color -var-file=orchestrator.tfvars.json -out=p >/dev/null && terraform apply -input=false -no-color p >/dev/null'
    names = " ".join(f'"{folder}"' for folder in folders)
    if parallel:
        return f'for d in {names}; do ( {step} ) & done; wait'
    return f'for d in {names}; do ( {step} ) || exit 1; done'


def _run_loop(repo: Path, folders: list[Path], parallel: bool) -> float:
    """Run the plain Terraform loop with the credentials the orchestrator would use."""
    from .credentials import AwsTarget, CredentialBroker

    settings = load_settings(repo)
    broker = CredentialBroker(AwsTarget(settings.sandbox.endpoint), settings.state.role_arn, "bench-loop", repo / ".orchestrator" / "bench-credentials", "eu-west-1")
    from .discovery import discover

    inventory = discover(settings)
    credentials = {account.name: broker.credentials_file(account.name, account.deploy_role_arn) for account in inventory.accounts.values()}
    # One credentials file with every account's profiles is not what the generated provider expects,
    # so each folder gets its own file next to it.
    for folder in folders:
        shutil.copy(credentials[folder.name], folder / "credentials")
    environment = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", ""),
        "TF_IN_AUTOMATION": "1",
        "CHECKPOINT_DISABLE": "1",
        "TF_CLI_CONFIG_FILE": str(settings.work_dir / "terraform.rc"),
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    script = _loop_script(folders, parallel).replace('cd "$d" &&', 'cd "$d" && export AWS_SHARED_CREDENTIALS_FILE="$d/credentials" &&')
    started = time.monotonic()
    subprocess.run(["bash", "-c", script], env=environment, check=True)
    return time.monotonic() - started


def measure_parallel_vs_sequential(workdir: Path, port: int, latency_ms: int, accounts: int) -> list[Measurement]:
    repo = _write_bench_repo(workdir / f"latency-{latency_ms}", port, latency_ms, accounts)
    settings = load_settings(repo)
    results = []
    try:
        sandbox.up(settings)
        cpu_before, started = _children_cpu(), time.monotonic()
        _, report = _orchestrator(repo, "apply", "--all", "--sandbox", "--workers", "5")
        results.append(Measurement("orchestrator", f"orchestrator apply, {accounts} accounts, empty sandbox", "invoke apply --all --sandbox --workers 5", time.monotonic() - started, _children_cpu() - cpu_before, f"{sum(r['counts']['add'] for r in report['shards'])} resources added"))

        cpu_before, started = _children_cpu(), time.monotonic()
        _, report = _orchestrator(repo, "apply", "--all", "--sandbox", "--workers", "5")
        commands = sum(len(r["commands"]) for r in report["shards"])
        results.append(Measurement("orchestrator-again", f"orchestrator apply again, nothing changed ({accounts} accounts)", "invoke apply --all --sandbox --workers 5", time.monotonic() - started, _children_cpu() - cpu_before, f"{commands} terraform commands in all"))

        for parallel in (False, True):
            _restart_sandbox(repo)
            loop_dir = Path(tempfile.mkdtemp(prefix="loop-", dir=workdir))
            folders = _loop_folders(repo, loop_dir)
            cpu_before = _children_cpu()
            wall = _run_loop(repo, folders, parallel)
            label = "all folders at once" if parallel else "one folder after the other"
            loop_command = _loop_script([Path("<folder>")], parallel).replace('"<folder>"', "<each folder>")
            results.append(Measurement("loop-parallel" if parallel else "loop-sequential", f"plain terraform loop, {label}", loop_command, wall, _children_cpu() - cpu_before))
            if not parallel:
                cpu_before = _children_cpu()
                wall = _run_loop(repo, folders, parallel)
                results.append(Measurement("loop-sequential-again", "plain terraform loop again, one folder after the other, nothing changed", loop_command, wall, _children_cpu() - cpu_before))
    finally:
        sandbox.down(settings)
    return results


READING_NOTE = """Reading the figures: every Terraform command that configures the AWS provider costs seconds
of CPU before it does any work, so on 2 cores the CPU floor bounds every variant. The
orchestrator's first apply does more per shard than the loop: `show -json` and a Checkov scan
for the policy stage, and a `state pull` for the backup before the apply. So it cannot beat the
parallel loop there. It wins when little changed, because a shard without changes runs a
single `terraform plan`.
"""

VALIDATION_FILES = 1000
VALIDATION_ACCOUNTS = 10


def _write_validation_repo(root: Path, files: int, accounts: int) -> Path:
    """Create a repository with ``files`` deployment files of about 30 lines, spread over accounts."""
    repo = root / "validation-repo"
    shutil.copytree(TEMPLATE_ROOT / "modules", repo / "modules", ignore=shutil.ignore_patterns(".terraform"))
    for account_index in range(accounts):
        account_id = f"{200000000000 + account_index}"
        folder = repo / "Accounts" / f"team-{account_index}"
        folder.mkdir(parents=True)
        (folder / "account.json").write_text(json.dumps({
            "name": f"team-{account_index}", "account_id": account_id, "environment": "staging",
            "regions": ["eu-west-1", "us-east-1"], "default_region": "eu-west-1",
            "deploy_role_arn": f"arn:aws:iam::{account_id}:role/terraform-deployer",
        }), encoding="utf-8")
    for index in range(files):
        folder = repo / "Accounts" / f"team-{index % accounts}"
        (folder / f"app-{index}.tfvars").write_text(
            f'# Application {index}: its key and buckets.\nproject = "app-{index}"\nregion  = "{"eu-west-1" if index % 2 else "us-east-1"}"\n\n'
            'tags = {\n  Owner      = "team"\n  CostCentre = "CC-1"\n}\n\n'
            'kms_keys = {\n  data = {\n    description = "Data key"\n    rotation    = true\n  }\n}\n\n'
            's3_buckets = {\n  raw = {\n    versioning    = true\n    kms_key_alias = "alias/app-data"\n    readers       = ["analytics", "ml"]\n  }\n'
            '  curated = {\n    versioning     = true\n    lifecycle_days = 365\n  }\n}\n',
            encoding="utf-8",
        )
    return repo


def measure_validation(workdir: Path, files: int = VALIDATION_FILES) -> list[Measurement]:
    """Time discovery, validation and selection of many deployment files, in-process."""
    from .runs import load_and_validate
    from .selection import SelectionRequest, select_shards

    repo = _write_validation_repo(workdir, files, VALIDATION_ACCOUNTS)
    settings = load_settings(repo)
    timings = []
    for _ in range(4):
        started = time.perf_counter()
        inventory = load_and_validate(settings)
        select_shards(inventory, settings, SelectionRequest(all=True))
        timings.append(time.perf_counter() - started)
    shards = len(inventory.shards)
    first, rest = timings[0], sorted(timings[1:])
    return [
        Measurement("validation-cold", f"discover + validate + select {files} files, first run (parses the modules' variables with python-hcl2)", "orchestrator.runs.load_and_validate + select_shards(--all)", first, 0.0, f"{shards} shards"),
        Measurement("validation-warm", f"discover + validate + select {files} files, median of 3 later runs", "orchestrator.runs.load_and_validate + select_shards(--all)", rest[1], 0.0, f"{shards} shards; {rest[1] / files * 1000:.2f} ms per file"),
    ]


def measure_policy_stage() -> list[Measurement]:
    """Time OPA per shard and Checkov over the 10 example plans kept as test data."""
    from .policy.checkov import ensure_checkov, run_checkov
    from .policy.opa import build_policy_input, load_policies

    plans = sorted((TEMPLATE_ROOT / "tests" / "data" / "plans").glob("*.json"))
    settings = load_settings(TEMPLATE_ROOT)
    policy_set = load_policies(TEMPLATE_ROOT / "policies")
    documents = [json.loads(path.read_text(encoding="utf-8")) for path in plans]

    started = time.perf_counter()
    for path, plan in zip(plans, documents):
        account, _, service = path.stem.split("--")
        policy_set.evaluate(build_policy_input(plan, {"environment": "prod", "account": account, "service": service}))
    opa_seconds = time.perf_counter() - started

    checkov = ensure_checkov(settings.tools_dir)
    started = time.perf_counter()
    run_checkov(checkov, {path.stem: path for path in plans}, skip_checks=settings.policy.checkov_skip, soft_fail_checks=settings.policy.checkov_soft_fail)
    checkov_once = time.perf_counter() - started

    started = time.perf_counter()
    for path in plans[:3]:
        run_checkov(checkov, {path.stem: path}, skip_checks=settings.policy.checkov_skip, soft_fail_checks=settings.policy.checkov_soft_fail)
    checkov_each = (time.perf_counter() - started) / 3

    return [
        Measurement("policy-opa", f"OPA (regopy) over {len(plans)} plans, one after the other", "PolicySet.evaluate per plan", opa_seconds, 0.0, f"{opa_seconds / len(plans) * 1000:.0f} ms per shard"),
        Measurement("policy-checkov-batch", f"Checkov, one process for {len(plans)} plans", "run_checkov with every plan", checkov_once, 0.0, f"{checkov_once / len(plans):.2f} s per shard"),
        Measurement("policy-checkov-single", "Checkov, one process for one plan (mean of 3)", "run_checkov with one plan", checkov_each, 0.0, f"{checkov_each * len(plans):.1f} s for {len(plans)} shards this way"),
    ]


def render_page(sections: dict[str, list[Measurement]], command: str, load_before: tuple) -> str:
    cores = os.cpu_count()
    load_after = os.getloadavg()
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    terraform = resolve_binary("terraform")
    lines = [
        "# Benchmarks",
        "",
        f"Written by `{command}` on {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}. Every number below comes from that run.",
        "",
        "## Machine",
        "",
        f"- {cores} cores, {memory_gib:.0f} GiB memory, {platform.system()} {platform.release()} ({platform.machine()})",
        f"- Python {platform.python_version()}, Terraform {binary_version(terraform)}, AWS provider from the local mirror, moto {_moto_version()} as the sandbox on 127.0.0.1",
        f"- load average (1 min) {load_before[0]:.1f} when the run started and {load_after[0]:.1f} when it ended: other work on the machine inflates wall times",
        "",
        READING_NOTE,
    ]
    for title, measurements in sections.items():
        if measurements[0].key.startswith(("validation", "policy")):
            lines += [f"## {title}", "", "| variant | wall s | note |", "|---|---:|---|"]
            lines += [f"| {m.name} | {m.wall_seconds:.3f} | {m.detail} |" for m in measurements]
            lines += ["", f"Command: `{measurements[0].command}`, in the `invoke bench` process.", ""]
            continue
        lines += [f"## {title}", "", "| variant | wall s | CPU s (children) | CPU floor s (CPU ÷ cores) | note |", "|---|---:|---:|---:|---|"]
        for m in measurements:
            lines.append(f"| {m.name} | {m.wall_seconds:.1f} | {m.cpu_seconds:.1f} | {m.cpu_seconds / cores:.1f} | {m.detail} |")
        by_key = {m.key: m for m in measurements}
        first, again = by_key["orchestrator"], by_key["orchestrator-again"]
        sequential, parallel, sequential_again = by_key.get("loop-sequential"), by_key.get("loop-parallel"), by_key.get("loop-sequential-again")
        lines.append("")
        if sequential:
            lines.append(f"- First apply: the orchestrator took {first.wall_seconds / sequential.wall_seconds:.2f}× the wall time of the sequential loop" + (f" and {first.wall_seconds / parallel.wall_seconds:.2f}× that of the parallel loop." if parallel else "."))
        if sequential_again:
            lines.append(f"- Nothing changed: the orchestrator took {again.wall_seconds / sequential_again.wall_seconds:.2f}× the wall time of the sequential loop, because an unchanged shard runs one `terraform plan` and nothing else.")
        lines += ["", "Commands:", ""] + [f"- {m.name}: `{m.command}`" for m in measurements] + [""]
    return "\n".join(lines) + "\n"


def _moto_version() -> str:
    from importlib.metadata import version

    return version("moto")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench", description="Benchmarks on the sandbox.")
    parser.add_argument("--output", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--quick", action="store_true", help="skip the run with injected latency")
    parser.add_argument("--accounts", type=int, default=BENCH_ACCOUNTS)
    arguments = parser.parse_args(argv)

    from .sandbox import _port_in_use

    port = next(p for p in range(5590, 5690) if not _port_in_use(p))
    sections = {}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="tdo-bench-") as scratch:
        title = f"Overhead: validation of {VALIDATION_FILES} deployment files"
        print(f"measuring: {title}", file=sys.stderr)
        sections[title] = measure_validation(Path(scratch))
        title = "Policy stage: OPA and Checkov over the 10 example plans"
        print(f"measuring: {title}", file=sys.stderr)
        sections[title] = measure_policy_stage()
        for latency in ([0] if arguments.quick else [0, 50]):
            title = f"Parallel against sequential: {arguments.accounts} accounts, {BUCKETS_PER_ACCOUNT} buckets each, {latency} ms injected latency per request"
            print(f"measuring: {title}", file=sys.stderr)
            sections[title] = measure_parallel_vs_sequential(Path(scratch), port, latency, arguments.accounts)

    command = "invoke bench" + (" --quick" if arguments.quick else "")
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    arguments.output.write_text(render_page(sections, command, load_before), encoding="utf-8")
    print(f"wrote {arguments.output}", file=sys.stderr)
    return 0
