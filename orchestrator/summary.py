"""The summary table printed at the end of a run."""

from __future__ import annotations

from tabulate import tabulate

from .runs import RunReport

HEADERS = ["shard", "account", "region", "service", "add", "change", "destroy", "policy", "result", "duration"]


def render_summary(report: RunReport) -> str:
    """Return the run's summary table followed by one line per failure, note and total."""
    rows = [
        [
            result.shard_id,
            f"{result.account} ({result.account_id})",
            result.region,
            result.service,
            result.counts.add,
            result.counts.change,
            result.counts.destroy,
            result.policy.get("status", "-"),
            f"{result.status}, {result.rollback['status']}" if result.rollback else result.status,
            f"{result.duration:.1f}s",
        ]
        for result in report.results
    ]
    lines = [tabulate(rows, headers=HEADERS, tablefmt="simple", colalign=("left", "left", "left", "left", "right", "right", "right", "left", "left", "right"))]

    for result in report.results:
        if result.error:
            first_lines = "\n    ".join(result.error.splitlines()[:12])
            lines.append(f"\n{result.shard_id}: {result.status}\n    {first_lines}")
            if result.log_file:
                lines.append(f"    log: {result.log_file}")
        for note in result.notes:
            lines.append(f"{result.shard_id}: {note}")

    totals = ", ".join(f"{count} {status}" for status, count in sorted(report.totals().items()))
    lines.append(f"\n{report.action} finished in {report.duration:.1f}s: {totals or 'no shards'}. Run {report.run_id}, reports {report.run_dir}/report.json and report.md")
    # Notes and errors were redacted per shard; this pass adds every shard's sensitive values.
    return report.redactor.text("\n".join(lines))
