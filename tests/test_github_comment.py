"""The sticky pull-request comment and the step summary, against a fake GitHub API on 127.0.0.1."""

from __future__ import annotations

import http.client
import json
import logging
import time

import pytest

from conftest import free_port
from github_fake import FakeGitHub
from orchestrator import github
from orchestrator.github import (
    DEFAULT_API_URL,
    STEP_SUMMARY_MAX_BYTES,
    GitHubContext,
    RetryPolicy,
    comment_marker,
    post_sticky_comment,
    write_step_summary,
)

TOKEN = "ghs_testTokenValue0123456789abcdefXYZ"
REPOSITORY = "octo-org/infra"
PR_NUMBER = 7

# Short backoff keeps the retry tests fast, and the cap lets the tests' Retry-After of 3 s through.
FAST_RETRIES = RetryPolicy(retries=2, backoff_seconds=0.01, max_retry_after_seconds=5)

PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """Fail any test whose client would connect anywhere but 127.0.0.1, or go through a proxy."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)

    connect = http.client.HTTPConnection.connect

    def connect_to_loopback_only(connection):
        # AssertionError is not an OSError, so the client cannot turn it into a problem and hide it.
        assert connection.host == "127.0.0.1", f"a test tried to connect to {connection.host}"
        return connect(connection)

    # HTTPSConnection.connect calls this method too.
    monkeypatch.setattr(http.client.HTTPConnection, "connect", connect_to_loopback_only)


@pytest.fixture
def start_github():
    """Return a function that starts a fake GitHub with the given options; all are closed at teardown."""
    servers = []

    def start(**options) -> FakeGitHub:
        server = FakeGitHub(TOKEN, repository=REPOSITORY, pull_requests=(PR_NUMBER,), **options).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def fake_github(start_github) -> FakeGitHub:
    return start_github()


@pytest.fixture
def context(fake_github) -> GitHubContext:
    return GitHubContext(api_url=fake_github.api_url, token=TOKEN, repository=REPOSITORY, pr_number=PR_NUMBER)


@pytest.fixture
def recorded_sleeps(monkeypatch) -> list[float]:
    """Record the client's waits instead of sleeping."""
    waits = []
    monkeypatch.setattr(github, "sleep", waits.append)
    return waits


def post(context: GitHubContext, parts: list[str], **options):
    return post_sticky_comment(context, parts, retry_policy=options.pop("retry_policy", FAST_RETRIES), **options)


def marked(part: int, count: int, text: str) -> str:
    return f"{comment_marker('orchestrator-report', part, count)}\n{text}"


# --- Creating, updating and deleting parts ---


def test_first_post_creates_parts(fake_github, context):
    outcome = post(context, ["summary", "shard a", "shard b"])

    assert outcome.posted
    assert outcome.problems == []
    comments = fake_github.comments(PR_NUMBER)
    assert [comment["body"] for comment in comments] == [
        marked(1, 3, "summary"), marked(2, 3, "shard a"), marked(3, 3, "shard b"),
    ]
    assert outcome.comment_ids == [comment["id"] for comment in comments]
    assert outcome.url_of_first == comments[0]["html_url"]
    assert len(fake_github.requests_by_method("POST")) == 3


def test_requests_carry_github_headers(fake_github, context):
    post(context, ["summary"])

    for request in fake_github.requests:
        assert request.authorization_scheme == "Bearer"
        assert request.headers["accept"] == "application/vnd.github+json"
        assert request.headers["x-github-api-version"] == "2022-11-28"
        assert request.headers["user-agent"]
    listing = fake_github.requests_by_method("GET")[0]
    assert listing.path == f"/repos/{REPOSITORY}/issues/{PR_NUMBER}/comments"
    assert listing.query["per_page"] == "100"


def test_second_post_shrinks_to_one_part(fake_github, context):
    first = post(context, ["summary", "shard a", "shard b"])

    second = post(context, ["new summary"])

    assert second.posted
    assert second.comment_ids == [first.comment_ids[0]]
    comments = fake_github.comments(PR_NUMBER)
    assert [comment["body"] for comment in comments] == [marked(1, 1, "new summary")]
    assert [request.path.rsplit("/", 1)[-1] for request in fake_github.requests_by_method("PATCH")] == [str(first.comment_ids[0])]
    deleted = [int(request.path.rsplit("/", 1)[-1]) for request in fake_github.requests_by_method("DELETE")]
    assert deleted == first.comment_ids[1:]


def test_second_post_grows_to_three_parts(fake_github, context):
    first = post(context, ["summary"])

    second = post(context, ["new summary", "shard a", "shard b"])

    assert second.posted
    assert second.comment_ids[0] == first.comment_ids[0]
    comments = fake_github.comments(PR_NUMBER)
    assert [comment["body"] for comment in comments] == [
        marked(1, 3, "new summary"), marked(2, 3, "shard a"), marked(3, 3, "shard b"),
    ]
    assert len(fake_github.requests_by_method("PATCH")) == 1
    assert len(fake_github.requests_by_method("POST")) == 3


def test_unchanged_parts_not_rewritten(fake_github, context):
    first = post(context, ["summary", "shard a"])
    requests_after_first = len(fake_github.requests)

    second = post(context, ["summary", "shard a"])

    assert second.posted
    assert second.comment_ids == first.comment_ids
    assert second.url_of_first == first.url_of_first
    assert [request.method for request in fake_github.requests[requests_after_first:]] == ["GET"]


def test_other_comments_left_alone(fake_github, context):
    human = fake_github.add_comment(PR_NUMBER, "Looks good to me")
    quoted = fake_github.add_comment(PR_NUMBER, "> <!-- orchestrator-report part 1 of 1 -->\nquoted")
    other_marker = fake_github.add_comment(PR_NUMBER, "<!-- cost-report part 1 of 1 -->\ncosts")

    outcome = post(context, ["summary"])

    assert outcome.posted
    remaining = {comment["id"] for comment in fake_github.comments(PR_NUMBER)}
    assert {human["id"], quoted["id"], other_marker["id"]} <= remaining
    assert fake_github.requests_by_method("DELETE") == []


def test_pagination_finds_sticky_comment(start_github):
    fake_github = start_github(page_size=2)
    for number in range(5):
        fake_github.add_comment(PR_NUMBER, f"review comment {number}")
    sticky = fake_github.add_comment(PR_NUMBER, marked(1, 1, "old summary"))
    fake_github.add_comment(PR_NUMBER, "a later comment")
    context = GitHubContext(api_url=fake_github.api_url, token=TOKEN, repository=REPOSITORY, pr_number=PR_NUMBER)

    outcome = post(context, ["new summary"])

    assert outcome.posted
    assert outcome.comment_ids == [sticky["id"]]
    assert fake_github.requests_by_method("POST") == []
    assert [request.query.get("page", "1") for request in fake_github.requests_by_method("GET")] == ["1", "2", "3", "4"]


def test_duplicate_parts_keep_oldest(fake_github, context):
    oldest_first = fake_github.add_comment(PR_NUMBER, marked(1, 2, "summary from run A"))
    newer_first = fake_github.add_comment(PR_NUMBER, marked(1, 2, "summary from run B"))
    oldest_second = fake_github.add_comment(PR_NUMBER, marked(2, 2, "shard from run A"))
    newer_second = fake_github.add_comment(PR_NUMBER, marked(2, 2, "shard from run B"))

    outcome = post(context, ["summary", "shard"])

    assert outcome.posted
    assert outcome.comment_ids == [oldest_first["id"], oldest_second["id"]]
    remaining = [comment["id"] for comment in fake_github.comments(PR_NUMBER)]
    assert remaining == [oldest_first["id"], oldest_second["id"]]
    deleted = {int(request.path.rsplit("/", 1)[-1]) for request in fake_github.requests_by_method("DELETE")}
    assert deleted == {newer_first["id"], newer_second["id"]}


def test_unreadable_part_number_deleted(fake_github, context):
    broken = fake_github.add_comment(PR_NUMBER, "<!-- orchestrator-report part one of two -->\nedited by hand")

    outcome = post(context, ["summary"])

    assert outcome.posted
    assert broken["id"] not in [comment["id"] for comment in fake_github.comments(PR_NUMBER)]


def test_custom_marker(fake_github, context):
    post(context, ["plan report"])

    outcome = post(context, ["apply report"], marker="orchestrator-apply")

    assert outcome.posted
    bodies = [comment["body"] for comment in fake_github.comments(PR_NUMBER)]
    assert bodies == [marked(1, 1, "plan report"), "<!-- orchestrator-apply part 1 of 1 -->\napply report"]


@pytest.mark.parametrize("marker", ["", "two words", "a--b", "end-->", "-leading"])
def test_invalid_marker_raises(context, marker):
    with pytest.raises(ValueError, match="invalid comment marker"):
        post(context, ["summary"], marker=marker)


def test_empty_report_sends_nothing(fake_github, context):
    outcome = post(context, [])

    assert not outcome.posted
    assert "no parts" in outcome.problems[0]
    assert fake_github.requests == []


# --- Failures ---


def test_too_long_part_reported(fake_github, context):
    outcome = post(context, ["summary", "x" * 70_000])

    assert not outcome.posted
    assert len(outcome.comment_ids) == 1
    assert len(outcome.problems) == 1
    problem = outcome.problems[0]
    assert "422" in problem
    assert f"POST /repos/{REPOSITORY}/issues/{PR_NUMBER}/comments" in problem
    assert "Validation Failed" in problem
    assert "body is too long (maximum is 65536 characters)" in problem
    assert "split the report" in problem
    # 422 is not retried: one POST for part 1 and one for part 2.
    assert len(fake_github.requests_by_method("POST")) == 2


def test_server_errors_then_success(fake_github, context):
    fake_github.fail_next(2, status=500)

    outcome = post(context, ["summary"])

    assert outcome.posted
    assert outcome.problems == []
    assert len(fake_github.requests_by_method("GET")) == 3
    assert len(fake_github.comments(PR_NUMBER)) == 1


def test_bad_gateway_on_patch_retried(fake_github, context):
    post(context, ["summary"])
    fake_github.fail_next(1, status=502, method="PATCH")

    outcome = post(context, ["new summary"])

    assert outcome.posted
    assert len(fake_github.requests_by_method("PATCH")) == 2
    assert [comment["body"] for comment in fake_github.comments(PR_NUMBER)] == [marked(1, 1, "new summary")]


def test_unavailable_always_gives_up(fake_github, context):
    fake_github.fail_next(None, status=503)
    started = time.monotonic()

    outcome = post(context, ["summary"])

    elapsed = time.monotonic() - started
    assert not outcome.posted
    assert len(outcome.problems) == 1
    assert "503" in outcome.problems[0]
    assert "Service Unavailable" in outcome.problems[0]
    assert "after 3 attempts" in outcome.problems[0]
    assert "Post the report again later" in outcome.problems[0]
    assert len(fake_github.requests) == 3
    assert elapsed < 5


def test_default_backoff_is_short(fake_github, context, recorded_sleeps):
    fake_github.fail_next(None, status=503)

    outcome = post_sticky_comment(context, ["summary"])

    assert not outcome.posted
    assert recorded_sleeps == [1.0, 2.0]


def test_retry_after_honoured(fake_github, context, recorded_sleeps):
    fake_github.fail_next(1, status=429, headers={"Retry-After": "3"})

    outcome = post(context, ["summary"])

    assert outcome.posted
    assert recorded_sleeps == [3.0]


def test_rate_limit_reset_honoured(fake_github, context, recorded_sleeps):
    reset = int(time.time()) + 2
    fake_github.fail_next(1, status=403, headers={"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(reset)})

    outcome = post(context, ["summary"])

    assert outcome.posted
    assert len(recorded_sleeps) == 1
    assert 0 < recorded_sleeps[0] <= 2


def test_long_retry_after_not_waited(fake_github, context, recorded_sleeps):
    fake_github.fail_next(1, status=403, headers={"Retry-After": "120"})

    outcome = post(context, ["summary"])

    assert not outcome.posted
    assert recorded_sleeps == []
    assert len(fake_github.requests) == 1
    assert "a wait of 120 s" in outcome.problems[0]


def test_forbidden_without_retry_after(fake_github, context, recorded_sleeps):
    fake_github.fail_next(1, status=403)

    outcome = post(context, ["summary"])

    assert not outcome.posted
    assert recorded_sleeps == []
    assert "pull-requests: write" in outcome.problems[0]


def test_unknown_pull_request_reported(fake_github, context):
    context.pr_number = 99

    outcome = post(context, ["summary"])

    assert not outcome.posted
    assert "404" in outcome.problems[0]
    assert f"GET /repos/{REPOSITORY}/issues/99/comments" in outcome.problems[0]
    assert "Check GITHUB_REPOSITORY" in outcome.problems[0]
    assert len(fake_github.requests) == 1


def test_unknown_repository_reported(fake_github, context):
    context.repository = "octo-org/missing"

    outcome = post(context, ["summary"])

    assert not outcome.posted
    assert "404" in outcome.problems[0]
    assert "octo-org/missing" in outcome.problems[0]


def test_wrong_token_reported(fake_github, context):
    context.token = "ghs_someOtherTokenValue987654321"

    outcome = post(context, ["summary"])

    assert not outcome.posted
    assert "401" in outcome.problems[0]
    assert "Bad credentials" in outcome.problems[0]
    assert "GITHUB_TOKEN" in outcome.problems[0]


def test_unreachable_api_reported(context):
    context.api_url = f"http://127.0.0.1:{free_port()}"

    outcome = post(context, ["summary"])

    assert not outcome.posted
    assert "Could not reach GitHub" in outcome.problems[0]
    assert "after 3 attempt(s)" in outcome.problems[0]


def test_redirect_to_other_origin_not_followed(fake_github, context):
    fake_github.fail_next(1, status=301, headers={"Location": "http://127.0.0.1:1/elsewhere"})

    outcome = post(context, ["summary"])

    assert not outcome.posted
    assert "301" in outcome.problems[0]
    assert "http://127.0.0.1:1/elsewhere" in outcome.problems[0]
    assert len(fake_github.requests) == 1


def test_next_link_to_other_origin_not_followed(start_github):
    fake_github = start_github(page_size=1)
    fake_github.add_comment(PR_NUMBER, "review comment")
    fake_github.add_comment(PR_NUMBER, "another review comment")
    fake_github.link_base = "http://127.0.0.1:1"
    context = GitHubContext(api_url=fake_github.api_url, token=TOKEN, repository=REPOSITORY, pr_number=PR_NUMBER)

    outcome = post(context, ["summary"])

    assert not outcome.posted
    assert "another origin" in outcome.problems[0]
    assert fake_github.requests_by_method("POST") == []


def test_failed_delete_still_posted(fake_github, context):
    post(context, ["summary", "shard a"])
    fake_github.fail_next(None, status=500, method="DELETE")

    outcome = post(context, ["new summary"])

    assert outcome.posted
    assert len(outcome.problems) == 1
    assert "DELETE" in outcome.problems[0]
    assert "stays until the next post deletes it" in outcome.problems[0]


# --- The token stays secret ---


def token_failure_cases(fake_github, context):
    def too_long():
        return post(context, ["x" * 70_000])

    def unavailable():
        fake_github.fail_next(None, status=503)
        return post(context, ["summary"])

    def unknown_pull_request():
        context.pr_number = 99
        return post(context, ["summary"])

    def unreachable():
        context.api_url = f"http://127.0.0.1:{free_port()}"
        return post(context, ["summary"])

    def missing_repository():
        context.repository = None
        return post(context, ["summary"])

    return {"too_long": too_long, "unavailable": unavailable, "unknown_pull_request": unknown_pull_request,
            "unreachable": unreachable, "missing_repository": missing_repository}


@pytest.mark.parametrize("case", ["too_long", "unavailable", "unknown_pull_request", "unreachable", "missing_repository"])
def test_token_never_in_problems(fake_github, context, caplog, case):
    caplog.set_level(logging.DEBUG)

    outcome = token_failure_cases(fake_github, context)[case]()

    assert outcome.problems
    for problem in outcome.problems:
        assert TOKEN not in problem
    assert TOKEN not in caplog.text
    assert TOKEN not in repr(context)


def test_fake_records_no_token(fake_github, context):
    post(context, ["summary"])

    for request in fake_github.requests:
        assert TOKEN not in repr(request)


# --- The context from the environment ---


def environment(fake_github: FakeGitHub, **overrides) -> dict[str, str]:
    values = {"GITHUB_API_URL": fake_github.api_url, "GITHUB_TOKEN": TOKEN, "GITHUB_REPOSITORY": REPOSITORY}
    values.update(overrides)
    return values


def test_missing_token_sends_nothing(fake_github):
    context = GitHubContext.from_environment(environment(fake_github, GITHUB_TOKEN=""), pr_number=PR_NUMBER)

    outcome = post(context, ["summary"])

    assert context.missing() == ["GITHUB_TOKEN"]
    assert not outcome.posted
    assert "GITHUB_TOKEN" in outcome.problems[0]
    assert fake_github.requests == []


def test_missing_everything_named():
    context = GitHubContext.from_environment({}, pr_number=None)

    assert context.missing() == ["GITHUB_TOKEN", "GITHUB_REPOSITORY", "a pull request number (--pr or GITHUB_EVENT_PATH)"]


def test_default_api_url_without_request():
    # Only the value is checked: no test sends a request to the default URL.
    context = GitHubContext.from_environment({"GITHUB_TOKEN": TOKEN}, pr_number=PR_NUMBER)

    assert context.api_url == DEFAULT_API_URL


@pytest.mark.parametrize(("api_url", "repository", "pr_number", "expected"), [
    ("ftp://127.0.0.1/", REPOSITORY, PR_NUMBER, "GITHUB_API_URL as an http(s) URL (got 'ftp://127.0.0.1')"),
    ("http://127.0.0.1:1", "infra", PR_NUMBER, "GITHUB_REPOSITORY as owner/name (got 'infra')"),
    ("http://127.0.0.1:1", "a/b/c", PR_NUMBER, "GITHUB_REPOSITORY as owner/name (got 'a/b/c')"),
    ("http://127.0.0.1:1", REPOSITORY, 0, "a positive pull request number (got 0)"),
])
def test_invalid_settings_named(api_url, repository, pr_number, expected):
    context = GitHubContext.from_environment(
        {"GITHUB_API_URL": api_url, "GITHUB_TOKEN": TOKEN, "GITHUB_REPOSITORY": repository}, pr_number=pr_number)

    assert context.missing() == [expected]


def write_event(tmp_path, event: dict) -> str:
    path = tmp_path / "event.json"
    path.write_text(json.dumps(event))
    return str(path)


def test_pr_number_from_pull_request_event(tmp_path, fake_github):
    event_path = write_event(tmp_path, {"action": "synchronize", "number": PR_NUMBER, "pull_request": {"number": PR_NUMBER}})
    context = GitHubContext.from_environment(environment(fake_github, GITHUB_EVENT_PATH=event_path), pr_number=None)

    outcome = post(context, ["summary"])

    assert context.pr_number == PR_NUMBER
    assert outcome.posted


def test_pr_number_from_issue_comment_event(tmp_path, fake_github):
    event = {"action": "created", "issue": {"number": PR_NUMBER, "pull_request": {"url": "http://127.0.0.1/pulls/7"}}}
    event_path = write_event(tmp_path, event)

    context = GitHubContext.from_environment(environment(fake_github, GITHUB_EVENT_PATH=event_path), pr_number=None)

    assert context.pr_number == PR_NUMBER
    assert context.missing() == []


def test_issue_comment_on_plain_issue(tmp_path, fake_github):
    event_path = write_event(tmp_path, {"action": "created", "issue": {"number": 12}})

    context = GitHubContext.from_environment(environment(fake_github, GITHUB_EVENT_PATH=event_path), pr_number=None)

    assert context.pr_number is None
    assert context.missing()[0].startswith("a pull request number (--pr or GITHUB_EVENT_PATH): ")
    assert "names no pull request" in context.missing()[0]


def test_explicit_pr_number_wins(tmp_path, fake_github):
    event_path = write_event(tmp_path, {"pull_request": {"number": 3}})

    context = GitHubContext.from_environment(environment(fake_github, GITHUB_EVENT_PATH=event_path), pr_number=PR_NUMBER)

    assert context.pr_number == PR_NUMBER


def test_unreadable_event_file_named(tmp_path, fake_github):
    event_path = tmp_path / "event.json"
    event_path.write_text("{not json")

    context = GitHubContext.from_environment(environment(fake_github, GITHUB_EVENT_PATH=str(event_path)), pr_number=None)

    assert context.pr_number is None
    assert f"cannot read the event file {event_path}" in context.missing()[0]


def test_enterprise_path_prefix(start_github):
    fake_github = start_github(path_prefix="/api/v3", page_size=1)
    fake_github.add_comment(PR_NUMBER, "review comment")
    sticky = fake_github.add_comment(PR_NUMBER, marked(1, 1, "old summary"))
    context = GitHubContext.from_environment(environment(fake_github, GITHUB_API_URL=fake_github.api_url + "/"), pr_number=PR_NUMBER)

    outcome = post(context, ["new summary", "shard a"])

    assert context.api_url.endswith(":%d/api/v3" % fake_github.port)
    assert outcome.posted
    assert outcome.comment_ids[0] == sticky["id"]
    assert all(request.path.startswith("/api/v3/repos/") for request in fake_github.requests)
    assert len(fake_github.requests_by_method("GET")) == 2


# --- The step summary ---


def test_step_summary_appended(tmp_path):
    summary = tmp_path / "summary.md"
    summary.write_text("# Earlier step\n")

    write_step_summary(summary, "## Plan\n\n2 to add")

    assert summary.read_text() == "# Earlier step\n## Plan\n\n2 to add\n"


def test_step_summary_without_path(tmp_path):
    write_step_summary(None, "## Plan")

    assert list(tmp_path.iterdir()) == []


def test_step_summary_cut_with_note(tmp_path):
    summary = tmp_path / "summary.md"
    summary.write_text("# Earlier step\n")
    lines = ["## Plan", "<details><summary>shard a</summary>", "", "```diff"]
    lines += [f"+ resource line {number} ü" for number in range(80_000)]
    lines += ["```", "</details>"]
    markdown = "\n".join(lines)

    write_step_summary(summary, markdown)

    written = summary.read_bytes()
    assert len(written) <= STEP_SUMMARY_MAX_BYTES
    text = written.decode("utf-8")
    assert text.startswith("# Earlier step\n## Plan\n")
    assert "the report was cut here" in text
    body, _, note = text.rpartition("\n> **Note:**")
    assert body.endswith("\n```\n</details>\n")
    assert note.endswith("bytes were left out.\n")


def test_step_summary_full_file_unchanged(tmp_path):
    summary = tmp_path / "summary.md"
    summary.write_bytes(b"x" * STEP_SUMMARY_MAX_BYTES)

    write_step_summary(summary, "## Plan")

    assert summary.stat().st_size == STEP_SUMMARY_MAX_BYTES


@pytest.mark.parametrize(("markdown", "closers"), [
    ("text\n", ""),
    ("```\ncode\n", "```\n"),
    ("````\n```\ninner\n", "````\n"),
    ("```\ncode\n```\n", ""),
    ("<details>\n~~~\n", "~~~\n</details>\n"),
    ("<details>\n<details>\n</details>\n", "</details>\n"),
    ("```\n<details>\n", "```\n"),
])
def test_closing_lines_table(markdown, closers):
    assert github._closing_lines(markdown) == closers
