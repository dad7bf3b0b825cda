"""Invoke tasks: thin wrappers that turn flags into the orchestrator's own command line.

Every task calls ``orchestrator.cli.main`` so that ``invoke plan …`` and
``python -m orchestrator plan …`` parse flags the same way and return the same exit codes.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from invoke import Collection, Exit, task

SELECTION_HELP = {
    "all": "every shard of the repository",
    "changed_files": "PATH: changed paths or globs (repeat the flag, or separate with commas or spaces)",
    "since": "GIT_REF: shards affected by changes since this commit, branch or tag",
    "deployment": "ID: deployment (account/name) or shard (account/name/service); repeatable",
    "account": "NAME: only this account; repeatable",
    "service": "NAME: only this service; repeatable",
    "region": "REGION: only this region; repeatable",
}
SELECTION_LISTS = ["changed_files", "deployment", "account", "service", "region"]
COMMENT_HELP = {"comment": "post the report as the sticky pull-request comment", "pr": "NUMBER: pull request (default: from GITHUB_EVENT_PATH)"}


def _comment_argv(comment: bool, pr: int) -> list[str]:
    return (["--comment"] if comment else []) + (["--pr", str(pr)] if pr else [])


def _selection_argv(all=False, changed_files=(), since=None, deployment=(), account=(), service=(), region=()) -> list[str]:
    argv: list[str] = []
    if all:
        argv.append("--all")
    for flag, values in (("--changed-files", changed_files), ("--deployment", deployment), ("--account", account), ("--service", service), ("--region", region)):
        for value in values:
            argv += [flag, value]
    if since:
        argv += ["--since", since]
    return argv


def _call(argv: list[str]) -> None:
    from orchestrator.cli import main

    code = main(argv)
    if code:
        raise Exit(code=code)


@task(auto_shortflags=False, iterable=SELECTION_LISTS, help={**SELECTION_HELP, "sandbox": "use the embedded AWS sandbox", "workers": "parallel shards (default 5)", "json": "write the JSON report to this file", "markdown": "write the Markdown report to this file", "detailed_exitcode": "exit 2 when there are changes", **COMMENT_HELP})
def plan(c, all=False, changed_files=None, since=None, deployment=None, account=None, service=None, region=None, sandbox=False, workers=0, json="", markdown="", detailed_exitcode=False, comment=False, pr=0):
    """Validate, then plan the selected shards in parallel."""
    argv = ["plan", *_selection_argv(all, changed_files or (), since, deployment or (), account or (), service or (), region or ())]
    argv += ["--sandbox"] if sandbox else []
    argv += ["--workers", str(workers)] if workers else []
    argv += ["--json", json] if json else []
    argv += ["--markdown", markdown] if markdown else []
    argv += ["--detailed-exitcode"] if detailed_exitcode else []
    argv += _comment_argv(comment, pr)
    _call(argv)


@task(auto_shortflags=False, iterable=SELECTION_LISTS, help={**SELECTION_HELP, "sandbox": "use the embedded AWS sandbox", "workers": "parallel shards (default 5)", "json": "write the JSON report to this file", "markdown": "write the Markdown report to this file", **COMMENT_HELP})
def apply(c, all=False, changed_files=None, since=None, deployment=None, account=None, service=None, region=None, sandbox=False, workers=0, json="", markdown="", comment=False, pr=0):
    """Apply the selected shards: saved plans when still current, otherwise plan first."""
    argv = ["apply", *_selection_argv(all, changed_files or (), since, deployment or (), account or (), service or (), region or ())]
    argv += ["--sandbox"] if sandbox else []
    argv += ["--workers", str(workers)] if workers else []
    argv += ["--json", json] if json else []
    argv += ["--markdown", markdown] if markdown else []
    argv += _comment_argv(comment, pr)
    _call(argv)



@task(auto_shortflags=False, help={"report": "FILE: the report (default: the latest run's report.md)", "pr": COMMENT_HELP["pr"]})
def comment(c, report="", pr=0):
    """Post a run's Markdown report as the sticky pull-request comment (and the step summary)."""
    _call(["comment"] + (["--report", report] if report else []) + (["--pr", str(pr)] if pr else []))


@task(auto_shortflags=False, iterable=SELECTION_LISTS, help={**SELECTION_HELP, "max_levels": "level jobs in the apply workflow (default 3)", "github_output": "FILE: append key=value lines ($GITHUB_OUTPUT)"})
def matrix(c, all=False, changed_files=None, since=None, deployment=None, account=None, service=None, region=None, max_levels=3, github_output=""):
    """Print the selected shards as a GitHub Actions matrix, one level per dependency wave."""
    argv = ["matrix", *_selection_argv(all, changed_files or (), since, deployment or (), account or (), service or (), region or ())]
    argv += ["--max-levels", str(max_levels)]
    argv += ["--github-output", github_output] if github_output else []
    _call(argv)


@task(auto_shortflags=False, help={"json": "write the diagnostics as JSON to this file"})
def validate(c, json=""):
    """Check every deployment file without any cloud access."""
    _call(["validate", *(["--json", json] if json else [])])


@task(auto_shortflags=False, iterable=SELECTION_LISTS, help={**SELECTION_HELP, "json": "print JSON"})
def shards(c, all=False, changed_files=None, since=None, deployment=None, account=None, service=None, region=None, json=False):
    """List shards with their account, region and state key."""
    argv = ["shards", *_selection_argv(all, changed_files or (), since, deployment or (), account or (), service or (), region or ())]
    _call(argv + (["--json"] if json else []))


SHARD_HELP = {"shard": "ID: the shard, <account>/<deployment>/<service> (see invoke shards)", "sandbox": "use the embedded AWS sandbox"}


def _shard_argv(command: str, shard: str, sandbox: bool) -> list[str]:
    if not shard:
        raise Exit(f"invoke {command} needs --shard <account>/<deployment>/<service>; list them with: invoke shards", code=4)
    return [command, "--shard", shard] + (["--sandbox"] if sandbox else [])


@task(auto_shortflags=False, help={**SHARD_HELP, "json": "print the metadata as JSON"})
def backups(c, shard="", sandbox=False, json=False):
    """List a shard's state backups (one is taken before every apply)."""
    _call(_shard_argv("backups", shard, sandbox) + (["--json"] if json else []))


@task(name="restore-state", auto_shortflags=False, help={**SHARD_HELP, "backup": "BACKUP_ID from invoke backups", "yes": "do not ask"})
def restore_state(c, shard="", backup="", sandbox=False, yes=False):
    """Push a backup of the same lineage through Terraform, then show how it differs from reality."""
    _call(_shard_argv("restore-state", shard, sandbox) + ["--backup", backup] + (["--yes"] if yes else []))


@task(auto_shortflags=False, help={**SHARD_HELP, "backup": "BACKUP_ID from invoke backups", "yes": "do not ask"})
def rollback(c, shard="", backup="", sandbox=False, yes=False):
    """Converge a shard to the configuration recorded with a backup."""
    _call(_shard_argv("rollback", shard, sandbox) + ["--backup", backup] + (["--yes"] if yes else []))


@task(auto_shortflags=False, help={**SHARD_HELP, "yes": "do not ask"})
def unlock(c, shard="", sandbox=False, yes=False):
    """Show who holds a shard's state lock and release it after confirmation."""
    _call(_shard_argv("unlock", shard, sandbox) + (["--yes"] if yes else []))


@task(name="errored-state", auto_shortflags=False, help={**SHARD_HELP, "push": "push the kept state now", "export": "FILE: write it in clear (mode 0600)"})
def errored_state(c, shard="", sandbox=False, push=False, export=""):
    """Show, push or export a state kept encrypted after a failed state upload."""
    _call(_shard_argv("errored-state", shard, sandbox) + (["--push"] if push else []) + (["--export", export] if export else []))


@task(auto_shortflags=False, help={"since": "YYYY-MM-DD (default 7 days ago)", "until": "YYYY-MM-DD (default today)", "account": "account name or id", "result": "e.g. applied, failed", "action": "plan, apply, rollback, restore-state, unlock", "shard": "ID: a shard, or a prefix such as account/deployment", "json": "JSON lines", "show_output": "print the redacted Terraform output", "sandbox": "query the embedded AWS sandbox"})
def audit(c, since="", until="", account="", result="", action="", shard="", json=False, show_output=False, sandbox=False):
    """Query the audit trail by date range, account, action and result."""
    argv = ["audit"]
    for flag, value in (("--since", since), ("--until", until), ("--account", account), ("--result", result), ("--action", action), ("--shard", shard)):
        argv += [flag, value] if value else []
    for flag, enabled in (("--json", json), ("--show-output", show_output), ("--sandbox", sandbox)):
        if enabled:
            argv.append(flag)
    _call(argv)


@task(auto_shortflags=False, help={"sandbox": "in the embedded AWS sandbox instead of AWS"})
def bootstrap(c, sandbox=False):
    """Create the state buckets, the audit bucket and lock tables (once per organisation)."""
    _call(["bootstrap"] + (["--sandbox"] if sandbox else []))


@task(help={"port": "port on 127.0.0.1 (default 5480)", "latency_ms": "delay added to every request, in milliseconds"})
def sandbox_up(c, port=0, latency_ms=-1):
    """Start the AWS sandbox (moto on 127.0.0.1) and create the state and audit buckets."""
    argv = ["sandbox", "up"] + (["--port", str(port)] if port else []) + (["--latency-ms", str(latency_ms)] if latency_ms >= 0 else [])
    _call(argv)


@task(help={"port": "port on 127.0.0.1 (default 5480)"})
def sandbox_down(c, port=0):
    """Stop the sandbox; everything in it is discarded."""
    _call(["sandbox", "down"] + (["--port", str(port)] if port else []))


@task(help={"port": "port on 127.0.0.1 (default 5480)"})
def sandbox_status(c, port=0):
    """Print the sandbox endpoint URL and whether it runs."""
    _call(["sandbox", "status"] + (["--port", str(port)] if port else []))


@task(help={"fast": "skip the tests that run real Terraform", "pytest_args": "extra arguments for pytest"})
def test(c, fast=False, pytest_args=""):
    """Run the test suite (real Terraform against a sandbox of its own)."""
    from orchestrator.policy.checkov import ensure_checkov
    from orchestrator.settings import load_settings

    # Checkov gets an environment of its own: its bc-python-hcl2 would replace python-hcl2 here.
    ensure_checkov(load_settings(Path(__file__).resolve().parent).tools_dir)
    argv = [sys.executable, "-m", "pytest", "-ra"]
    argv += ["-m", "not terraform"] if fast else []
    argv += pytest_args.split() if pytest_args else []
    completed = subprocess.run(argv)
    if completed.returncode:
        raise Exit(code=completed.returncode)


@task(help={"output": "where to write the benchmark page", "quick": "fewer repetitions"})
def bench(c, output="docs/benchmarks.md", quick=False):
    """Measure the orchestrator against plain Terraform loops on the sandbox; write docs/benchmarks.md."""
    from orchestrator.bench import main as bench_main

    code = bench_main(["--output", output] + (["--quick"] if quick else []))
    if code:
        raise Exit(code=code)


sandbox_tasks = Collection("sandbox")
sandbox_tasks.add_task(sandbox_up, "up")
sandbox_tasks.add_task(sandbox_down, "down")
sandbox_tasks.add_task(sandbox_status, "status")

namespace = Collection(plan, apply, validate, shards, matrix, comment, bootstrap, backups, restore_state, rollback, unlock, errored_state, audit, test, bench, sandbox_tasks)
