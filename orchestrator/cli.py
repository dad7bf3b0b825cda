"""Command line: one parser for ``python -m orchestrator`` and for the invoke tasks in tasks.py.

Only this layer turns exceptions into messages and exit codes (see runs.py for the codes).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from . import sandbox
from .credentials import CredentialsError, SandboxUnreachable
from .errors import ConfigurationError, OrchestratorError, SelectionError, ValidationFailed
from .runs import (
    EXIT_CONFIGURATION_ERROR,
    EXIT_OK,
    EXIT_SHARD_FAILED,
    EXIT_VALIDATION_FAILED,
    RunOptions,
    execute,
    load_and_validate,
    plan_exit_code,
)
from .sandbox import SandboxError
from .selection import SelectionRequest, select_shards
from .settings import SETTINGS_FILE_NAME, Settings, load_settings
from .terraform import TerraformError
from .validation import validation_warnings

logger = logging.getLogger("orchestrator")


def find_repo_root(start: Path) -> Path:
    """Walk up from ``start`` to the folder with orchestrator.toml or an Accounts/ folder."""
    for folder in [start, *start.parents]:
        if (folder / SETTINGS_FILE_NAME).exists() or (folder / "Accounts").is_dir():
            return folder
    return start


def _split_values(values: list[str] | None) -> list[str]:
    """Accept repeated flags, several values after one flag, and comma or space separated values."""
    result: list[str] = []
    for value in values or []:
        result += [part for chunk in value.split(",") for part in chunk.split() if part]
    return result


def _add_selection_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("selection")
    group.add_argument("--all", action="store_true", help="every shard of the repository")
    group.add_argument("--changed-files", nargs="+", action="extend", metavar="PATH_OR_GLOB", help="shards affected by these changed paths (globs allowed, relative to the repo root)")
    group.add_argument("--since", metavar="GIT_REF", help="shards affected by changes since this git commit, branch or tag")
    group.add_argument("--deployment", action="append", metavar="ID", help="a deployment (account/name) or shard (account/name/service); repeatable")
    group.add_argument("--account", action="append", help="only shards of this account (folder name); repeatable")
    group.add_argument("--service", action="append", help="only shards of this service; repeatable")
    group.add_argument("--region", action="append", help="only shards in this region; repeatable")


def _selection(arguments: argparse.Namespace) -> SelectionRequest:
    for flag in ("changed_files", "deployment", "account", "service", "region"):
        given = getattr(arguments, flag)
        if given is not None and not _split_values(given):
            raise SelectionError(f"--{flag.replace('_', '-')} was given without a value; pass at least one")
    return SelectionRequest(
        all=arguments.all,
        changed_files=_split_values(arguments.changed_files),
        since=arguments.since,
        deployments=_split_values(arguments.deployment),
        accounts=_split_values(arguments.account),
        services=_split_values(arguments.service),
        regions=_split_values(arguments.region),
    )


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors exit with the configuration-error code, not 2.

    argparse exits with 2 by default, which would read as "changes present" in CI.
    """

    def error(self, message: str):
        self.print_usage(sys.stderr)
        self.exit(EXIT_CONFIGURATION_ERROR, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="orchestrator", description="Plan and apply Terraform shards across AWS accounts and regions.")
    parser.add_argument("--repo", type=Path, default=None, help="repository root (default: found from the current folder)")
    parser.add_argument("--verbose", "-v", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    for name, help_text in (("plan", "validate, then plan the selected shards in parallel"), ("apply", "apply the selected shards (saved plans when still current)")):
        command = commands.add_parser(name, help=help_text)
        _add_selection_flags(command)
        command.add_argument("--sandbox", action="store_true", help="run against the embedded AWS sandbox (started when not running)")
        command.add_argument("--workers", type=int, help="shards run at the same time (default: terraform.workers, 5)")
        command.add_argument("--json", type=Path, dest="json_report", help="also write the JSON report to this file")
        command.add_argument("--markdown", type=Path, dest="markdown_report", help="also write the Markdown report to this file")
        command.add_argument("--comment", action="store_true", help="post the report as the sticky pull-request comment (GITHUB_TOKEN, GITHUB_REPOSITORY); never fails the run")
        command.add_argument("--pr", type=int, metavar="NUMBER", help="pull request number (default: from GITHUB_EVENT_PATH)")
        if name == "plan":
            command.add_argument("--detailed-exitcode", action="store_true", help="exit with 2 when any shard has changes")

    validate = commands.add_parser("validate", help="check every deployment file without any cloud access")
    validate.add_argument("--json", type=Path, dest="json_report", help="also write the diagnostics as JSON to this file")

    shards = commands.add_parser("shards", help="list the shards (optionally only the selected ones)")
    _add_selection_flags(shards)
    shards.add_argument("--json", action="store_true", help="print JSON instead of a table")

    def shard_command(name: str, help_text: str, needs_backup: bool = False, asks: bool = False) -> argparse.ArgumentParser:
        command = commands.add_parser(name, help=help_text)
        command.add_argument("--shard", required=True, metavar="ID", help="the shard: <account>/<deployment>/<service> (see invoke shards)")
        command.add_argument("--sandbox", action="store_true", help="work on the embedded AWS sandbox")
        if needs_backup:
            command.add_argument("--backup", required=True, metavar="BACKUP_ID", help="a backup id from invoke backups")
        if asks:
            command.add_argument("--yes", action="store_true", help="do not ask for confirmation (for scripts)")
        return command

    shard_command("backups", "list a shard's state backups").add_argument("--json", action="store_true", help="print the backups' metadata as JSON")
    shard_command("restore-state", "push a backup of the shard's state (same lineage) through Terraform, then show drift", needs_backup=True, asks=True)
    shard_command("rollback", "converge a shard to the configuration recorded with a backup", needs_backup=True, asks=True)
    shard_command("unlock", "show who holds a shard's state lock and release it", asks=True)
    errored = shard_command("errored-state", "show, push or export a state kept after a failed state upload")
    errored.add_argument("--push", action="store_true", help="push the kept state now")
    errored.add_argument("--export", type=Path, metavar="FILE", help="write the kept state in clear to FILE (mode 0600)")

    audit = commands.add_parser("audit", help="query the audit trail by date, account, action and result")
    audit.add_argument("--since", metavar="YYYY-MM-DD", help="first day (UTC), default 7 days ago")
    audit.add_argument("--until", metavar="YYYY-MM-DD", help="last day (UTC), default today")
    audit.add_argument("--account", help="account name or id")
    audit.add_argument("--result", help="for example applied, failed, rolled back")
    audit.add_argument("--action", help="plan, apply, rollback, restore-state or unlock")
    audit.add_argument("--shard", metavar="ID", help="this shard, or every shard under this prefix (account/deployment)")
    audit.add_argument("--json", action="store_true", help="print JSON lines")
    audit.add_argument("--show-output", action="store_true", help="also print each record's Terraform output, redacted")
    audit.add_argument("--sandbox", action="store_true", help="query the embedded AWS sandbox")

    comment = commands.add_parser("comment", help="post a run's Markdown report as the sticky pull-request comment")
    comment.add_argument("--report", type=Path, metavar="FILE", help="the report to post (default: the latest run's report.md)")
    comment.add_argument("--pr", type=int, metavar="NUMBER", help="pull request number (default: from GITHUB_EVENT_PATH)")

    matrix = commands.add_parser("matrix", help="the selected shards as a GitHub Actions matrix, one level per dependency wave")
    _add_selection_flags(matrix)
    matrix.add_argument("--max-levels", type=int, default=3, help="level jobs in the apply workflow (default 3)")
    matrix.add_argument("--github-output", type=Path, metavar="FILE", help="append key=value lines to this file ($GITHUB_OUTPUT) instead of printing JSON")

    bootstrap = commands.add_parser("bootstrap", help="create the state buckets, the audit bucket and lock tables (once per organisation)")
    bootstrap.add_argument("--sandbox", action="store_true", help="in the embedded AWS sandbox instead of AWS")

    sandbox_command = commands.add_parser("sandbox", help="the embedded AWS sandbox on 127.0.0.1")
    sandbox_command.add_argument("action", choices=["up", "down", "status"])
    sandbox_command.add_argument("--port", type=int, help="port on 127.0.0.1 (default: sandbox.port, 5480)")
    sandbox_command.add_argument("--latency-ms", type=int, help="delay added to every request, in milliseconds")
    return parser


def _settings(arguments: argparse.Namespace) -> Settings:
    overrides: dict = {}
    if getattr(arguments, "workers", None):
        overrides.setdefault("terraform", {})["workers"] = arguments.workers
    if getattr(arguments, "port", None):
        overrides.setdefault("sandbox", {})["port"] = arguments.port
    if getattr(arguments, "latency_ms", None) is not None:
        overrides.setdefault("sandbox", {})["latency_ms"] = arguments.latency_ms
    repo_root = arguments.repo or find_repo_root(Path.cwd())
    return load_settings(repo_root, overrides)


def _print_diagnostics(error: ValidationFailed, json_path: Path | None) -> None:
    for diagnostic in error.diagnostics:
        print(str(diagnostic), file=sys.stderr)
    files = len({d.path for d in error.diagnostics})
    print(f"validation failed: {len(error.diagnostics)} error(s) in {files} file(s); nothing was planned or applied", file=sys.stderr)
    if json_path:
        json_path.write_text(json.dumps({"valid": False, "diagnostics": [d.__dict__ for d in error.diagnostics]}, indent=2), encoding="utf-8")


def _run(arguments: argparse.Namespace) -> int:
    from .summary import render_summary

    settings = _settings(arguments)
    options = RunOptions(action=arguments.command, sandbox=arguments.sandbox, workers=arguments.workers, detailed_exitcode=getattr(arguments, "detailed_exitcode", False), json_report=arguments.json_report, markdown_report=arguments.markdown_report)
    report = execute(settings, _selection(arguments), options)
    if report.results:
        print(render_summary(report))
    if arguments.comment and report.run_dir:
        from .pr_comment import publish

        report_path = Path(report.run_dir) / "report.md"
        publish(report_path.read_text(encoding="utf-8"), arguments.command, report_path, arguments.pr, sys.stderr)
    elif arguments.comment:
        # Nothing ran, but the pull request's comment must not keep showing an older plan.
        _publish_short_report(arguments, f"No shard is affected by {report.selection}; nothing to {arguments.command}.")
    if report.sandbox_endpoint:
        print(f"The sandbox keeps running at {report.sandbox_endpoint}; stop it with: invoke sandbox.down", file=sys.stderr)
    if arguments.command == "plan":
        return plan_exit_code(report, options.detailed_exitcode)
    return report.exit_code


def _validate(arguments: argparse.Namespace) -> int:
    settings = _settings(arguments)
    inventory = load_and_validate(settings)
    for warning in validation_warnings(inventory):
        print(f"warning: {warning}", file=sys.stderr)
    print(f"valid: {len(inventory.deployments)} deployment file(s), {len(inventory.shards)} shard(s), {len(inventory.accounts)} account(s)")
    if arguments.json_report:
        arguments.json_report.write_text(json.dumps({"valid": True, "diagnostics": []}, indent=2), encoding="utf-8")
    return EXIT_OK


def _shards(arguments: argparse.Namespace) -> int:
    from tabulate import tabulate

    settings = _settings(arguments)
    inventory = load_and_validate(settings)
    request = _selection(arguments)
    if not (request.all or request.by_change or request.deployments or request.accounts or request.services or request.regions):
        request.all = True
    shards = select_shards(inventory, settings, request)
    if not shards and request.by_change:
        print(f"No shard is affected by {request.describe()}.", file=sys.stderr)
        return EXIT_OK
    rows = [{"shard": s.id, "account": s.account.name, "account_id": s.account_id, "region": s.region, "service": s.service.name, "project": s.project, "state_key": s.state_key} for s in shards]
    if arguments.json:
        print(json.dumps(rows, indent=2))
    else:
        print(tabulate(rows, headers="keys"))
    return EXIT_OK


def _sandbox(arguments: argparse.Namespace) -> int:
    settings = _settings(arguments)
    if arguments.action == "up":
        status = sandbox.up(settings)
        print(f"sandbox running at {status.endpoint} (pid {status.pid or 'unknown'}, latency {settings.sandbox.latency_ms} ms); state and audit buckets are ready")
    elif arguments.action == "down":
        stopped = sandbox.down(settings)
        print("sandbox stopped; everything in it is gone" if stopped else "no sandbox of this checkout was running")
    else:
        status = sandbox.status(settings)
        print(f"{status.endpoint} {status.detail}" + (f" (pid {status.pid})" if status.pid else ""))
        return EXIT_OK if status.running else EXIT_SHARD_FAILED
    return EXIT_OK


def _shard_command(arguments: argparse.Namespace) -> int:
    from . import shard_commands

    settings = _settings(arguments)
    out = sys.stdout
    if arguments.command == "backups":
        return shard_commands.list_backups(settings, arguments.shard, arguments.sandbox, arguments.json, out)
    if arguments.command == "restore-state":
        return shard_commands.restore_state(settings, arguments.shard, arguments.backup, arguments.sandbox, arguments.yes, out)
    if arguments.command == "rollback":
        return shard_commands.rollback(settings, arguments.shard, arguments.backup, arguments.sandbox, arguments.yes, out)
    if arguments.command == "unlock":
        return shard_commands.unlock(settings, arguments.shard, arguments.sandbox, arguments.yes, out)
    return shard_commands.errored_state(settings, arguments.shard, arguments.sandbox, arguments.push, arguments.export, out)


def _publish_short_report(arguments: argparse.Namespace, text: str) -> None:
    """Replace the sticky comment with a short report when a run stopped before planning."""
    from .pr_comment import publish

    from .redaction import Redactor

    markdown = Redactor().text(f"### Terraform {arguments.command}\n\n{text}\n")
    publish(markdown, arguments.command, Path("(no report: the run stopped before planning)"), arguments.pr, sys.stderr)


def _comment(arguments: argparse.Namespace) -> int:
    from .pr_comment import publish

    settings = _settings(arguments)
    report_path = arguments.report or settings.work_dir / "runs" / "latest" / "report.md"
    if not report_path.is_file():
        raise ConfigurationError(f"no report at {report_path}; run invoke plan first or pass --report FILE")
    action = "apply" if "Terraform apply" in report_path.read_text(encoding="utf-8")[:200] else "plan"
    outcome = publish(report_path.read_text(encoding="utf-8"), action, report_path, arguments.pr, sys.stderr)
    return EXIT_OK if outcome.posted else EXIT_SHARD_FAILED


def _matrix(arguments: argparse.Namespace) -> int:
    from .matrix import matrix_main

    settings = _settings(arguments)
    request = _selection(arguments)
    if not (request.all or request.by_change or request.deployments or request.accounts or request.services or request.regions):
        raise SelectionError("invoke matrix needs a selection: --all, --changed-files, --since or --deployment")
    return matrix_main(settings, request, arguments.max_levels, arguments.github_output, sys.stdout)


def _bootstrap(arguments: argparse.Namespace) -> int:
    from .credentials import AwsTarget

    settings = _settings(arguments)
    target = AwsTarget(endpoint=sandbox.up(settings).endpoint) if arguments.sandbox else AwsTarget()
    for line in sandbox.bootstrap(settings, target):
        print(line)
    return EXIT_OK


def _audit(arguments: argparse.Namespace) -> int:
    from .audit import audit_main
    from .credentials import AwsTarget

    settings = _settings(arguments)
    target = AwsTarget(endpoint=sandbox.up(settings).endpoint) if arguments.sandbox else AwsTarget()
    return audit_main(settings, target, since=arguments.since, until=arguments.until, account=arguments.account, result=arguments.result,
                      action=arguments.action, shard=arguments.shard, as_json=arguments.json, show_output=arguments.show_output, stream=sys.stdout)


HANDLERS = {
    "plan": _run, "apply": _run, "validate": _validate, "shards": _shards, "sandbox": _sandbox, "audit": _audit, "bootstrap": _bootstrap, "comment": _comment, "matrix": _matrix,
    "backups": _shard_command, "restore-state": _shard_command, "rollback": _shard_command, "unlock": _shard_command, "errored-state": _shard_command,
}


def main(argv: list[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if arguments.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return HANDLERS[arguments.command](arguments)
    except ValidationFailed as error:
        _print_diagnostics(error, getattr(arguments, "json_report", None))
        if getattr(arguments, "comment", False):
            listed = "\n".join(f"- `{diagnostic}`" for diagnostic in error.diagnostics[:50])
            _publish_short_report(arguments, f"Validation failed: {len(error.diagnostics)} error(s); nothing was planned.\n\n{listed}")
        return EXIT_VALIDATION_FAILED
    except (ConfigurationError, SelectionError, SandboxError, SandboxUnreachable, CredentialsError, TerraformError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_CONFIGURATION_ERROR
    except OrchestratorError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_CONFIGURATION_ERROR
