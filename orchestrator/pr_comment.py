"""Publish a run's Markdown report: the sticky pull-request comment and the step summary.

Posting is a side channel of a run: a failure is printed as a warning with what to do next,
and it never changes the run's exit code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, TextIO

from .github import COMMENT_MAX_CHARACTERS, CommentOutcome, GitHubContext, comment_marker, post_sticky_comment, write_step_summary
from .markdown_split import split_markdown

# One sticky comment per pull request and action, so an apply does not replace the plan.
MARKERS = {"plan": "terraform-orchestrator-plan", "apply": "terraform-orchestrator-apply"}
MAX_COMMENTS = 10


def full_report_hint(report_path: Path, environ: Mapping[str, str]) -> str:
    """Return where the whole report can be read: the CI run's page, or the local file."""
    server, repository, run_id = environ.get("GITHUB_SERVER_URL"), environ.get("GITHUB_REPOSITORY"), environ.get("GITHUB_RUN_ID")
    if server and repository and run_id:
        return f"the workflow run {server}/{repository}/actions/runs/{run_id} (report.md in its artifacts or logs)"
    return str(report_path)


def publish(markdown: str, action: str, report_path: Path, pr_number: int | None, stream: TextIO, environ: Mapping[str, str] | None = None) -> CommentOutcome:
    """Write the step summary when GitHub Actions provides one, then post the sticky comment."""
    environ = os.environ if environ is None else environ
    context = GitHubContext.from_environment(environ, pr_number)
    if context.step_summary_path:
        write_step_summary(context.step_summary_path, markdown)

    marker = MARKERS.get(action, MARKERS["plan"])
    # Each part gets a hidden marker line in front, which counts towards GitHub's limit too.
    limit = COMMENT_MAX_CHARACTERS - len(comment_marker(marker, MAX_COMMENTS, MAX_COMMENTS)) - 1
    parts = split_markdown(markdown, limit=limit, max_parts=MAX_COMMENTS, full_report_hint=full_report_hint(report_path, environ))
    outcome = post_sticky_comment(context, parts, marker=marker)
    if outcome.posted:
        stream.write(f"comment: report posted to pull request #{context.pr_number} in {len(outcome.comment_ids)} comment(s): {outcome.url_of_first}\n")
    for problem in outcome.problems:
        stream.write(f"warning: comment: {problem}\n")
    return outcome
