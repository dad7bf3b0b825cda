"""The Markdown report of a run: a summary table, then one collapsible section per shard.

Only resource addresses and actions come from the plans, never attribute values, and every
line goes through the redactor. Terminal escape sequences are stripped, and each code block's
fence is longer than any backtick run inside it, so plan text cannot break out of it.
``markdown_split.split_markdown`` cuts the result into pull-request comments.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Callable

from .plan_summary import ChangeCounts
from .redaction import Redactor
from .rollback import NOT_ROLLED_BACK, ROLLED_BACK, RollbackOutcome
from .runs import RunReport
from .shard_pipeline import ShardResult

_ESCAPE_SEQUENCE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|[\x00-\x08\x0b-\x1f\x7f]")

ACTION_SYMBOLS = {
    ("create",): "+ create",
    ("update",): "~ update",
    ("delete",): "- delete",
    ("delete", "create"): "-/+ replace",
    ("create", "delete"): "+/- replace",
    ("read",): "<= read",
    ("forget",): ". forget",
}

# Table columns after the shard's location, and the ChangeCounts field each one shows.
COUNT_COLUMNS = (
    ("create", "add"),
    ("update", "change"),
    ("delete", "destroy"),
    ("replace", "replace"),
    ("import", "importing"),
    ("move", "move"),
    ("forget", "forget"),
)


def strip_escape_sequences(text: str) -> str:
    """Remove terminal escape sequences and control characters other than tab and newline."""
    return _ESCAPE_SEQUENCE.sub("", text)


def code_block(text: str, language: str = "") -> str:
    """Return ``text`` in a fenced code block whose fence no backtick run inside can close."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{language}\n{text}\n{fence}"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def resource_changes(plan_json_file: str) -> list[str]:
    """Return one line per changed resource: action and address (no values)."""
    if not plan_json_file or not Path(plan_json_file).exists():
        return []
    plan = json.loads(Path(plan_json_file).read_text(encoding="utf-8"))
    lines = []
    for change in plan.get("resource_changes", []):
        details = change.get("change", {})
        actions = tuple(details.get("actions", []))
        if actions in (("no-op",), ("read",)) and not details.get("importing") and not change.get("previous_address"):
            continue
        label = ACTION_SYMBOLS.get(actions, "/".join(actions))
        if details.get("importing"):
            label += " (import)"
        if change.get("previous_address") and change["previous_address"] != change.get("address"):
            label += f" (moved from {change['previous_address']})"
        lines.append(f"{label} {change.get('address', '?')}")
    return lines


def describe_counts(counts: ChangeCounts) -> str:
    """Return Terraform's "N to add, M to change, K to destroy", plus the other counts that are not zero."""
    phrase = f"{counts.add} to add, {counts.change} to change, {counts.destroy} to destroy"
    for label, value in (("replace", counts.replace), ("import", counts.importing), ("move", counts.move), ("forget", counts.forget)):
        if value:
            phrase += f", {value} to {label}"
    return phrase


def _policy_lines(policy: dict, clean: Callable[[str], str]) -> list[str]:
    checkov = policy.get("checkov", {})
    lines = [
        f"Policy: **{policy.get('status', 'unknown')}** ({policy.get('opa_rules', 0)} Rego rules; Checkov {checkov.get('passed', 0)} passed, "
        f"{checkov.get('failed', 0)} failed, {checkov.get('soft_failed', 0)} soft-failed)."
    ]
    for label, items in (("Error", policy.get("errors", [])), ("Failure", policy.get("failures", [])), ("Warning", policy.get("warnings", []))):
        lines += [f"- {label}: {_cell(clean(item))}" for item in items]
    return lines + [""]


def _rollback_outcome(rollback: dict) -> RollbackOutcome:
    return RollbackOutcome(
        status=rollback.get("status", "unknown"),
        target=rollback.get("target", "-"),
        backup_id=rollback.get("backup_id"),
        created_by_failed_apply=list(rollback.get("created_by_failed_apply", [])),
        planned=list(rollback.get("planned", [])),
        not_converged=list(rollback.get("not_converged", [])),
        error=rollback.get("error", ""),
    )


def _rollback_lines(outcome: RollbackOutcome, clean: Callable[[str], str]) -> list[str]:
    """Return Markdown lines for a rollback: its outcome, target, backup, what still differs and why."""
    lines = [f"Rollback: **{outcome.status}**. Target: {_cell(clean(outcome.target))}; backup `{outcome.backup_id or '-'}`; {len(outcome.planned)} change(s) planned.", ""]
    if outcome.not_converged:
        changes = "\n".join(f"{'/'.join(item.get('actions', []))} {item.get('address', '?')}" for item in outcome.not_converged)
        lines += ["Not converged (these resources still differ from the target):", "", code_block(clean(changes)), ""]
    if outcome.created_by_failed_apply and outcome.status != ROLLED_BACK:
        label = "Created by the failed apply, still in place:" if outcome.status == NOT_ROLLED_BACK else "Created by the failed apply (before the rollback):"
        lines += [label, "", code_block(clean("\n".join(outcome.created_by_failed_apply))), ""]
    if outcome.error:
        lines += ["Rollback error:", "", code_block(clean(outcome.error)), ""]
    return lines


def _shard_section(result: ShardResult, redactor: Redactor) -> list[str]:
    def clean(text: str) -> str:
        return redactor.text(strip_escape_sequences(str(text)))

    title = f"{result.shard_id}: {result.status}"
    if result.has_changes:
        title += f" ({describe_counts(result.counts)})"
    lines = ["<details>", f"<summary>{html.escape(clean(title), quote=False)}</summary>", ""]
    lines.append(f"Account {result.account} ({result.account_id}), region {result.region}, state key `{result.state_key}`, from `{result.deployment_file}`.")
    lines.append("")

    changes = resource_changes(result.plan_json_file)
    if changes:
        lines += ["Resource changes:", "", code_block(clean("\n".join(changes)), "diff"), ""]

    policy = result.policy
    if policy:
        lines += _policy_lines(policy, clean)

    rollback_note = ""
    if result.rollback:
        outcome = _rollback_outcome(result.rollback)
        rollback_note = outcome.describe()
        lines += _rollback_lines(outcome, clean)

    # The pipeline also adds the rollback's one-line description to the notes, shown in full above.
    notes = [note for note in result.notes if note != rollback_note]
    if notes:
        lines += [f"- {_cell(clean(note))}" for note in notes] + [""]

    # A policy failure's error text only repeats the findings listed above.
    policy_text = "\n".join([f"policy error: {e}" for e in policy.get("errors", [])] + [f"policy: {f}" for f in policy.get("failures", [])]) if policy else ""
    if result.error and result.error != policy_text:
        lines += ["Error:", "", code_block(clean(result.error)), ""]
    lines += ["</details>", ""]
    return lines


def _summary_lines(report: RunReport) -> list[str]:
    totals = ", ".join(f"{status} {count}" for status, count in report.totals().items())
    lines = [
        f"### Terraform {report.action}: {len(report.results)} shard(s)",
        "",
        f"Run `{report.run_id}`, {report.selection}, {report.terraform or 'no terraform run'}, {report.duration:.0f} s" + (f". Shards by status: {totals}." if totals else "."),
        "",
    ]
    if report.interrupted:
        lines += ["The run was interrupted, so shards that had not finished are marked interrupted.", ""]

    header = ["shard", "account", "region", "service", *(label for label, _ in COUNT_COLUMNS), "policy", "status"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * 4 + "---:|" * len(COUNT_COLUMNS) + "---|---|")
    for result in report.results:
        counts = result.counts.as_dict()
        cells = [_cell(result.shard_id), _cell(result.account), _cell(result.region), _cell(result.service)]
        cells += [str(counts[field]) for _, field in COUNT_COLUMNS]
        status = f"{result.status}, {result.rollback['status']}" if result.rollback else result.status
        cells += [_cell(result.policy.get("status", "-")), _cell(status)]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def render_markdown(report: RunReport, redactor: Redactor | None = None) -> str:
    """Return the run's Markdown report: summary table first, then a section per shard."""
    redactor = redactor or Redactor()
    lines = _summary_lines(report)
    for result in report.results:
        lines += _shard_section(result, redactor)
    return "\n".join(lines) + "\n"
