"""The Markdown report of a run: a summary table, then one collapsible section per shard.

Only resource addresses and actions come from the plans, never attribute values, and every
line goes through the redactor. Terminal escape sequences are stripped, and each code block's
fence is longer than any backtick run inside it, so plan text cannot break out of it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .redaction import Redactor
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


def strip_escape_sequences(text: str) -> str:
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


def _shard_section(result: ShardResult, redactor: Redactor) -> list[str]:
    counts = result.counts
    title = f"{result.shard_id}: {result.status}"
    if result.has_changes:
        title += f" ({counts.add} to add, {counts.change} to change, {counts.destroy} to destroy)"
    lines = ["<details>", f"<summary>{_cell(title)}</summary>", ""]
    lines.append(f"Account {result.account} ({result.account_id}), region {result.region}, state key `{result.state_key}`, from `{result.deployment_file}`.")
    lines.append("")

    changes = resource_changes(result.plan_json_file)
    if changes:
        lines += ["Resource changes:", "", code_block(redactor.text(strip_escape_sequences("\n".join(changes))), "diff"), ""]

    policy = result.policy
    if policy:
        lines.append(f"Policy: **{policy.get('status')}** ({policy.get('opa_rules', 0)} Rego rules; Checkov {policy.get('checkov', {}).get('passed', 0)} passed, {policy.get('checkov', {}).get('failed', 0)} failed, {policy.get('checkov', {}).get('soft_failed', 0)} soft-failed).")
        for label, items in (("Error", policy.get("errors", [])), ("Failure", policy.get("failures", [])), ("Warning", policy.get("warnings", []))):
            lines += [f"- {label}: {_cell(redactor.line(strip_escape_sequences(item)))}" for item in items]
        lines.append("")

    for note in result.notes:
        lines.append(f"- {_cell(redactor.line(note))}")
    policy_text = "\n".join([f"policy error: {e}" for e in policy.get("errors", [])] + [f"policy: {f}" for f in policy.get("failures", [])]) if policy else ""
    if result.error and result.error != policy_text:
        lines += ["", "Error:", "", code_block(redactor.text(strip_escape_sequences(result.error)))]
    lines += ["", "</details>", ""]
    return lines


def render_markdown(report: RunReport, redactor: Redactor | None = None) -> str:
    """Return the run's Markdown report: summary table first, then a section per shard."""
    redactor = redactor or Redactor()
    lines = [
        f"### Terraform {report.action}: {len(report.results)} shard(s)",
        "",
        f"Run `{report.run_id}`, {report.selection}, {report.terraform}, {report.duration:.0f} s.",
        "",
        "| shard | account | region | service | create | update | delete | replace | import | move | policy | status |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for result in report.results:
        counts = result.counts
        lines.append(
            f"| {_cell(result.shard_id)} | {_cell(result.account)} | {result.region} | {result.service} | {counts.add} | {counts.change} | "
            f"{counts.destroy} | {counts.replace} | {counts.importing} | {counts.move} | {result.policy.get('status', '-')} | {result.status} |"
        )
    lines.append("")
    for result in report.results:
        lines += _shard_section(result, redactor)
    return "\n".join(lines) + "\n"
