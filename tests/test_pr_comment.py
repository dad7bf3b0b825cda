"""The sticky comment when a run stops before planning: it must not keep showing an older plan."""

from __future__ import annotations

import io
from contextlib import redirect_stderr, redirect_stdout

import pytest

from github_fake import FakeGitHub
from orchestrator.cli import main as cli_main

TOKEN = "comment-test-token"


@pytest.fixture
def github(monkeypatch):
    server = FakeGitHub(TOKEN, repository="octo-org/infra", pull_requests=(7,)).start()
    monkeypatch.setenv("GITHUB_API_URL", server.api_url)
    monkeypatch.setenv("GITHUB_TOKEN", TOKEN)
    monkeypatch.setenv("GITHUB_REPOSITORY", "octo-org/infra")
    yield server
    server.close()


def run_cli(repo, *argv) -> tuple[int, str]:
    output = io.StringIO()
    with redirect_stdout(output), redirect_stderr(output):
        code = cli_main(["--repo", str(repo), *argv])
    return code, output.getvalue()


def test_comment_when_nothing_affected(template_repo, github):
    code, output = run_cli(template_repo, "plan", "--changed-files", "README.md", "--comment", "--pr", "7")
    assert code == 0, output
    body = github.comments(7)[0]["body"]
    assert "No shard is affected" in body


def test_comment_when_validation_fails(template_repo, github):
    broken = template_repo / "Accounts" / "staging" / "broken.tfvars"
    broken.write_text('project = "broken"\ns3_buckets = {\n')
    code, output = run_cli(template_repo, "plan", "--all", "--comment", "--pr", "7")
    assert code == 3, output
    body = github.comments(7)[0]["body"]
    assert "Validation failed" in body
    assert "broken.tfvars" in body
