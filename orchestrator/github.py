"""Post the run's report to a pull request as one sticky comment, and to the job's step summary.

The report is posted as one or more comments through the GitHub REST API. Each comment starts
with a hidden marker line, ``<!-- orchestrator-report part 1 of 3 -->``, by which the next post
finds it again. Part 1 is edited in place, so it keeps its place in the conversation. The other
parts are edited or created, and parts left over from a longer report are deleted.

Posting never raises for HTTP or network failures, because a failed comment must not fail a
plan. ``post_sticky_comment`` returns a ``CommentOutcome`` whose ``problems`` say what failed and
what to do next. The token is sent only in the Authorization header, and only to the origin
(scheme, host and port) of ``GITHUB_API_URL``.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import logging
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from time import sleep
from typing import Any, Mapping

logger = logging.getLogger(__name__)

DEFAULT_API_URL = "https://api.github.com"
DEFAULT_MARKER = "orchestrator-report"
API_VERSION = "2022-11-28"
USER_AGENT = "terraform-deployment-orchestrator"

# GitHub rejects a longer comment body with 422 "body is too long (maximum is 65536 characters)".
COMMENT_MAX_CHARACTERS = 65_536

# The Actions runner drops a larger step summary as a whole, with the error "$GITHUB_STEP_SUMMARY
# upload aborted, supports content up to a size of 1024k".
STEP_SUMMARY_MAX_BYTES = 1024 * 1024

# GitHub's list endpoints accept per_page up to 100.
LIST_PAGE_SIZE = 100

# 100 pages of 100 comments. A longer list is more likely a pagination loop than a real
# pull request, and stopping costs only this post.
MAX_LIST_PAGES = 100

MISSING_PR_NUMBER = "a pull request number (--pr or GITHUB_EVENT_PATH)"

_MARKER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/-]*")
_LINK_ENTRY = re.compile(r'<([^>]*)>\s*;\s*rel="([^"]*)"')
_FENCE_OPENING = re.compile(r" {0,3}(`{3,}|~{3,})")


@dataclass
class GitHubContext:
    """The settings for posting: API URL, token, repository, pull request number and step summary file."""

    api_url: str = DEFAULT_API_URL
    token: str | None = field(default=None, repr=False)
    repository: str | None = None
    pr_number: int | None = None
    step_summary_path: str | None = None
    # Why GITHUB_EVENT_PATH gave no pull request number, shown by missing().
    event_problem: str | None = None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str], pr_number: int | None = None) -> GitHubContext:
        """Build the context from GitHub Actions' variables. An explicit ``pr_number`` wins over the event file."""
        event_problem = None
        if pr_number is None:
            pr_number, event_problem = _pr_number_from_event(environ.get("GITHUB_EVENT_PATH") or None)

        return cls(
            api_url=(environ.get("GITHUB_API_URL") or DEFAULT_API_URL).rstrip("/"),
            token=environ.get("GITHUB_TOKEN") or None,
            repository=environ.get("GITHUB_REPOSITORY") or None,
            pr_number=pr_number,
            step_summary_path=environ.get("GITHUB_STEP_SUMMARY") or None,
            event_problem=event_problem,
        )

    def missing(self) -> list[str]:
        """Return a phrase for each missing or invalid setting, or an empty list when posting can start."""
        missing = []
        api_url = urllib.parse.urlsplit(self.api_url or "")
        if api_url.scheme not in ("http", "https") or not api_url.netloc:
            missing.append(f"GITHUB_API_URL as an http(s) URL (got {self.api_url!r})")
        if not self.token:
            missing.append("GITHUB_TOKEN")
        if not self.repository:
            missing.append("GITHUB_REPOSITORY")
        elif not _is_owner_and_name(self.repository):
            missing.append(f"GITHUB_REPOSITORY as owner/name (got {self.repository!r})")
        if self.pr_number is None:
            missing.append(MISSING_PR_NUMBER if self.event_problem is None else f"{MISSING_PR_NUMBER}: {self.event_problem}")
        elif isinstance(self.pr_number, bool) or not isinstance(self.pr_number, int) or self.pr_number < 1:
            missing.append(f"a positive pull request number (got {self.pr_number!r})")
        return missing


@dataclass
class CommentOutcome:
    """The result of one post.

    ``posted`` is true when every part was created or updated, even if a leftover comment could
    not be deleted. ``comment_ids`` lists the ids of the parts written so far, in part order.
    ``problems`` contains one sentence per failure, with what to do next.
    """

    posted: bool
    comment_ids: list[int] = field(default_factory=list)
    url_of_first: str | None = None
    problems: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long a failed request to GitHub is retried."""

    # Retries after the first attempt, shared by 5xx responses, connection errors and rate limits.
    retries: int = 2
    # The wait before the first retry after a 5xx response or connection error, doubled for each further retry.
    backoff_seconds: float = 1.0
    # The longest Retry-After (or rate-limit reset) wait that is honoured. A longer one fails the request.
    max_retry_after_seconds: float = 10.0


def comment_marker(marker: str, part: int, part_count: int) -> str:
    """Return the hidden first line of part ``part`` of ``part_count``."""
    return f"<!-- {marker} part {part} of {part_count} -->"


def post_sticky_comment(
    context: GitHubContext,
    parts: list[str],
    marker: str = DEFAULT_MARKER,
    timeout: float = 30,
    *,
    retry_policy: RetryPolicy = RetryPolicy(),
) -> CommentOutcome:
    """Create or update the report's comments on the pull request, and delete leftover parts.

    ``timeout`` is the limit in seconds for each request. Raises ValueError only for a marker that
    cannot sit inside an HTML comment. Every HTTP or network failure ends up in the outcome's
    ``problems``, and a missing token, repository or pull request number sends no request.
    """
    if not _MARKER_NAME.fullmatch(marker) or "--" in marker:
        raise ValueError(f"invalid comment marker {marker!r}: use letters, digits and single . _ : / - only")

    missing = context.missing()
    if missing:
        problems = [f"Cannot post the report to the pull request: missing {item}. Set it and post the report again." for item in missing]
        return CommentOutcome(posted=False, problems=problems)
    if not parts:
        return CommentOutcome(posted=False, problems=["Cannot post the report to the pull request: the report has no parts."])

    client = _GitHubClient(context, timeout, retry_policy)
    outcome = _post_parts(client, context, parts, marker)

    # No problem text is built with the token. Replacing it still keeps it out if GitHub echoes it.
    outcome.problems = [problem.replace(context.token, "***") for problem in outcome.problems]
    for problem in outcome.problems:
        logger.warning("%s", problem)
    if outcome.posted:
        logger.info("Posted the report to pull request #%s of %s in %d comment(s): %s",
                    context.pr_number, context.repository, len(outcome.comment_ids), outcome.url_of_first)
    return outcome


def write_step_summary(path: str | Path | None, markdown: str) -> None:
    """Append ``markdown`` to the step summary file at ``path``. An empty ``path`` writes nothing.

    The text is cut at a line, with its code fences and ``<details>`` closed and a note added,
    when the file would grow beyond GitHub's 1 MiB per step. A file that cannot be written is
    logged as a warning and not raised, because the summary must not fail a plan.
    """
    if not path:
        return
    target = Path(path)

    try:
        used_bytes = target.stat().st_size
    except FileNotFoundError:
        used_bytes = 0
    except OSError as error:
        logger.warning("Cannot write the step summary %s: %s. Check GITHUB_STEP_SUMMARY.", target, error)
        return

    text = markdown if markdown.endswith("\n") else markdown + "\n"
    available_bytes = STEP_SUMMARY_MAX_BYTES - used_bytes
    if len(text.encode("utf-8")) > available_bytes:
        text = _cut_markdown(text, available_bytes)
        if not text:
            logger.warning("The step summary %s is already at GitHub's limit of %d bytes, so the report was not added.",
                           target, STEP_SUMMARY_MAX_BYTES)
            return
        logger.warning("The report was cut to fit the step summary limit of %d bytes.", STEP_SUMMARY_MAX_BYTES)

    try:
        with target.open("a", encoding="utf-8") as summary:
            summary.write(text)
    except OSError as error:
        logger.warning("Cannot write the step summary %s: %s. Check GITHUB_STEP_SUMMARY.", target, error)


# --- Reading the context ---------------------------------------------------------------------


def _pr_number_from_event(event_path: str | None) -> tuple[int | None, str | None]:
    """Return the pull request number of the event file at ``event_path``, or None and the reason."""
    if event_path is None:
        return None, None
    try:
        event = json.loads(Path(event_path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        return None, f"cannot read the event file {event_path}: {error}"
    if not isinstance(event, dict):
        return None, f"the event file {event_path} does not contain a JSON object"

    pull_request = event.get("pull_request")
    issue = event.get("issue")
    if isinstance(pull_request, dict):
        number = pull_request.get("number")
    elif isinstance(issue, dict) and issue.get("pull_request"):
        # A comment on a pull request arrives as an issue_comment event whose issue is the pull request.
        number = issue.get("number")
    else:
        number = event.get("number")

    if isinstance(number, int) and not isinstance(number, bool) and number > 0:
        return number, None
    return None, f"the event file {event_path} names no pull request (no pull_request.number, issue.number of a pull request, or number)"


def _is_owner_and_name(repository: str) -> bool:
    owner, slash, name = repository.partition("/")
    return bool(owner) and slash == "/" and bool(name) and "/" not in name


# --- Posting the parts -----------------------------------------------------------------------


class _RequestFailed(Exception):
    """A request to GitHub that failed for good, with its sentence for CommentOutcome.problems in ``problem``."""

    def __init__(self, problem: str):
        super().__init__(problem)
        self.problem = problem


def _post_parts(client: _GitHubClient, context: GitHubContext, parts: list[str], marker: str) -> CommentOutcome:
    owner, name = context.repository.split("/", 1)
    repository_path = f"/repos/{urllib.parse.quote(owner, safe='')}/{urllib.parse.quote(name, safe='')}"
    comments_path = f"{repository_path}/issues/{context.pr_number}/comments"
    outcome = CommentOutcome(posted=False)

    try:
        existing = _list_marker_comments(client, comments_path, marker)
        kept, leftovers = _assign_parts(existing, marker, len(parts))

        for number, part in enumerate(parts, start=1):
            body = f"{comment_marker(marker, number, len(parts))}\n{part}"
            comment = kept.get(number)
            if comment is None:
                # NOTE: a POST retried after a 5xx that GitHub had in fact carried out leaves a duplicate
                # part. The next post deletes it, because it keeps the oldest comment of each part number.
                comment = _comment_of(client.send("POST", comments_path, {"body": body}), "POST", comments_path)
            elif comment.get("body") != body:
                comment_path = f"{repository_path}/issues/comments/{comment['id']}"
                comment = _comment_of(client.send("PATCH", comment_path, {"body": body}), "PATCH", comment_path)

            outcome.comment_ids.append(comment["id"])
            if number == 1:
                outcome.url_of_first = comment.get("html_url")
    except _RequestFailed as failure:
        outcome.problems.append(failure.problem)
        return outcome
    outcome.posted = True

    # Every part is in place, so a leftover that cannot be deleted only adds noise to the conversation.
    for comment in leftovers:
        try:
            client.send("DELETE", f"{repository_path}/issues/comments/{comment['id']}")
        except _RequestFailed as failure:
            outcome.problems.append(f"{failure.problem} The leftover comment {comment['id']} stays until the next post deletes it.")
    return outcome


def _list_marker_comments(client: _GitHubClient, comments_path: str, marker: str) -> list[dict]:
    """Return every comment of the pull request whose body starts with the marker, following pagination."""
    prefix = f"<!-- {marker} part "
    url = client.url(f"{comments_path}?per_page={LIST_PAGE_SIZE}")
    visited = set()
    comments = []

    while url:
        if url in visited or len(visited) >= MAX_LIST_PAGES:
            raise _RequestFailed(
                f"Listing the comments of {comments_path} stopped after {len(visited)} pages, because GitHub's Link "
                "header repeats a page or the pull request has too many comments. Check GITHUB_API_URL and post the report again."
            )
        visited.add(url)

        response = client.send("GET", url)
        if not isinstance(response.data, list):
            raise _RequestFailed(f"GitHub's response to GET {comments_path} is not a list of comments. Check GITHUB_API_URL.")
        for comment in response.data:
            if isinstance(comment, dict) and isinstance(comment.get("id"), int) and str(comment.get("body") or "").startswith(prefix):
                comments.append(comment)

        url = _next_page_url(response.headers.get("Link"))
        if url and _origin(url) != _origin(client.api_url):
            # The token goes with every request, so a link to another origin is not followed.
            raise _RequestFailed(
                f"GitHub's next-page link for {comments_path} points to another origin ({url}). "
                "It was not followed, so that the token is not sent there. Check GITHUB_API_URL."
            )
    return comments


def _assign_parts(comments: list[dict], marker: str, part_count: int) -> tuple[dict[int, dict], list[dict]]:
    """Split the marker comments into the one to reuse for each part number and the leftovers to delete.

    Of several comments with one part number (two runs that posted at once), the oldest is kept.
    A comment with an unreadable part number or one above ``part_count`` is a leftover.
    """
    part_pattern = re.compile(rf"<!-- {re.escape(marker)} part (\d+) of \d+ -->")
    by_number: dict[int, list[dict]] = {}
    leftovers = []

    for comment in comments:
        match = part_pattern.match(comment["body"])
        number = int(match.group(1)) if match else 0
        if 1 <= number <= part_count:
            by_number.setdefault(number, []).append(comment)
        else:
            leftovers.append(comment)

    kept = {}
    for number, group in by_number.items():
        group.sort(key=lambda comment: (str(comment.get("created_at") or ""), comment["id"]))
        kept[number] = group[0]
        leftovers.extend(group[1:])

    leftovers.sort(key=lambda comment: comment["id"])
    return kept, leftovers


def _comment_of(response: _Response, method: str, path: str) -> dict:
    if not isinstance(response.data, dict) or not isinstance(response.data.get("id"), int):
        raise _RequestFailed(f"GitHub's response to {method} {path} contains no comment id. Check GITHUB_API_URL.")
    return response.data


def _next_page_url(link_header: str | None) -> str | None:
    for url, relations in _LINK_ENTRY.findall(link_header or ""):
        if "next" in relations.split():
            return url
    return None


def _origin(url: str) -> tuple[str, str]:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


# --- One request, with retries ---------------------------------------------------------------


@dataclass
class _Response:
    status: int
    headers: Any
    data: Any


class _SameOriginRedirectHandler(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only within the same origin, because urllib resends the Authorization header."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if _origin(newurl) != _origin(req.full_url):
            return None
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class _GitHubClient:
    def __init__(self, context: GitHubContext, timeout: float, retry_policy: RetryPolicy):
        self.api_url = context.api_url.rstrip("/")
        self._token = context.token
        self._timeout = timeout
        self._retry_policy = retry_policy
        self._opener = urllib.request.build_opener(_SameOriginRedirectHandler)

    def url(self, path: str) -> str:
        return self.api_url + path

    def send(self, method: str, path_or_url: str, payload: dict | None = None) -> _Response:
        """Send one API request with the retries the policy allows. Raise _RequestFailed when it fails for good."""
        url = path_or_url if "://" in path_or_url else self.url(path_or_url)
        shown_path = _path_of(url)
        attempts = self._retry_policy.retries + 1

        for attempt in range(1, attempts + 1):
            try:
                return self._send_once(method, url, payload)
            except urllib.error.HTTPError as error:
                message = _github_message(error)
                wait = self._retry_wait(error.code, error.headers, attempt)
                if wait is None or attempt == attempts:
                    raise _RequestFailed(_describe_http_failure(method, shown_path, error, message, attempt, self._retry_policy)) from None
                logger.warning("GitHub returned %s for %s %s (attempt %d of %d); retrying in %.1f s.",
                               error.code, method, shown_path, attempt, attempts, wait)
            except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
                reason = getattr(error, "reason", None) or error
                if attempt == attempts:
                    raise _RequestFailed(
                        f"Could not reach GitHub at {self.api_url} for {method} {shown_path} after {attempt} attempt(s): {reason}. "
                        "Check GITHUB_API_URL and the network, then post the report again."
                    ) from None
                wait = self._retry_policy.backoff_seconds * 2 ** (attempt - 1)
                logger.warning("Could not reach GitHub for %s %s (attempt %d of %d): %s; retrying in %.1f s.",
                               method, shown_path, attempt, attempts, reason, wait)
            sleep(wait)

        raise AssertionError("unreachable: the last attempt returns or raises")

    def _send_once(self, method: str, url: str, payload: dict | None) -> _Response:
        headers = {
            "Accept": "application/vnd.github+json",
            "Authorization": f"Bearer {self._token}",
            "User-Agent": USER_AGENT,
            "X-GitHub-Api-Version": API_VERSION,
        }
        data = None
        if payload is not None:
            data = json.dumps(payload).encode("utf-8")
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(url, data=data, headers=headers, method=method)

        with self._opener.open(request, timeout=self._timeout) as response:
            body = response.read()
            status = response.status
            response_headers = response.headers

        if not body.strip():
            return _Response(status, response_headers, None)
        try:
            return _Response(status, response_headers, json.loads(body))
        except ValueError:
            raise _RequestFailed(f"GitHub's response to {method} {_path_of(url)} is not JSON. Check GITHUB_API_URL.") from None

    def _retry_wait(self, status: int, headers, attempt: int) -> float | None:
        """Return the seconds to wait before retrying after ``status``, or None when it is not worth a retry."""
        if 500 <= status <= 599:
            return self._retry_policy.backoff_seconds * 2 ** (attempt - 1)
        if status in (403, 429):
            wait = _rate_limit_wait(headers)
            if wait is not None and wait <= self._retry_policy.max_retry_after_seconds:
                return wait
        return None


def _rate_limit_wait(headers) -> float | None:
    """Return the wait in seconds that GitHub requests (Retry-After, or the reset of an exhausted rate limit), or None."""
    if headers is None:
        return None

    retry_after = (headers.get("Retry-After") or "").strip()
    if retry_after.isdigit():
        return float(retry_after)
    if retry_after:
        try:
            moment = email.utils.parsedate_to_datetime(retry_after)
        except (TypeError, ValueError):
            return None
        return max(0.0, (moment - datetime.now(timezone.utc)).total_seconds())

    reset = (headers.get("X-RateLimit-Reset") or "").strip()
    if headers.get("X-RateLimit-Remaining") == "0" and reset.isdigit():
        return max(0.0, int(reset) - datetime.now(timezone.utc).timestamp())
    return None


def _github_message(error: urllib.error.HTTPError) -> str:
    """Return GitHub's ``message`` and the messages of its ``errors`` list, or the HTTP reason phrase."""
    try:
        body = error.read()
    except (OSError, http.client.HTTPException):
        body = b""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return str(error.reason or "no message")

    messages = [str(data.get("message") or error.reason or "no message")]
    for detail in data.get("errors") or []:
        if isinstance(detail, dict) and detail.get("message"):
            messages.append(str(detail["message"]))
        elif isinstance(detail, str):
            messages.append(detail)
    return "; ".join(messages)


def _describe_http_failure(method: str, path: str, error: urllib.error.HTTPError, message: str, attempts: int, retry_policy: RetryPolicy) -> str:
    status = error.code
    headline = f"GitHub returned {status} for {method} {path} ({message})"
    if attempts > 1:
        headline += f" after {attempts} attempts"

    wait = _rate_limit_wait(error.headers) if status in (403, 429) else None
    if wait is not None:
        advice = (f"GitHub's rate limit requests a wait of {wait:.0f} s, longer than the "
                  f"{retry_policy.max_retry_after_seconds:.0f} s this step waits. Post the report again later.")
    elif status == 429 or (status == 403 and "rate limit" in message.lower()):
        advice = "GitHub's rate limit was exceeded. Post the report again in a few minutes."
    elif status == 401:
        advice = "Check that GITHUB_TOKEN holds a valid, unexpired token."
    elif status == 403:
        advice = "Give the token write access to pull requests, for example `permissions: pull-requests: write` in the workflow."
    elif status == 404:
        advice = ("Check GITHUB_REPOSITORY (owner/name), the pull request number and GITHUB_API_URL. "
                  "GitHub also returns 404 when the token cannot read the repository.")
    elif status == 422:
        advice = (f"GitHub rejected the comment. If the body is too long, split the report into parts of at most "
                  f"{COMMENT_MAX_CHARACTERS} characters, marker line included.")
    elif 300 <= status <= 399:
        location = error.headers.get("Location") if error.headers else None
        advice = (f"GitHub redirected the request to {location or 'another address'}, and the redirect was not followed. "
                  "Set GITHUB_API_URL or GITHUB_REPOSITORY to the new location.")
    elif 500 <= status <= 599:
        advice = "GitHub failed with a server error. Post the report again later."
    else:
        advice = "Check GITHUB_API_URL and the token's permissions."
    return f"{headline}. {advice}"


def _path_of(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


# --- Cutting the step summary ----------------------------------------------------------------


def _cut_markdown(text: str, max_bytes: int) -> str:
    """Return the longest start of ``text`` that ends at a line and fits ``max_bytes`` with closers and a note.

    Returns an empty string when not even the note fits.
    """
    encoded = text.encode("utf-8")
    budget = max_bytes

    while budget > 0:
        head = _head_at_line(encoded, budget)
        omitted_bytes = len(encoded) - len(head.encode("utf-8"))
        note = (f"\n> **Note:** the report was cut here to fit GitHub's step summary limit of "
                f"{STEP_SUMMARY_MAX_BYTES} bytes; the remaining {omitted_bytes} bytes were left out.\n")
        cut = head + _closing_lines(head) + note
        overflow = len(cut.encode("utf-8")) - max_bytes
        if overflow <= 0:
            return cut
        budget -= overflow
    return ""


def _head_at_line(encoded: bytes, max_bytes: int) -> str:
    """Return the longest start of ``encoded`` within ``max_bytes`` that ends with a line break, if there is one."""
    head = encoded[:max_bytes]
    line_end = head.rfind(b"\n")
    if line_end >= 0:
        head = head[: line_end + 1]
    # "ignore" drops a character whose bytes the cut split.
    text = head.decode("utf-8", errors="ignore")
    return text if text.endswith("\n") or not text else text + "\n"


def _closing_lines(markdown: str) -> str:
    """Return the lines that close a code fence and the ``<details>`` blocks left open in ``markdown``."""
    open_fence = None
    open_details = 0
    for line in markdown.splitlines():
        if open_fence is None:
            match = _FENCE_OPENING.match(line)
            if match:
                open_fence = match.group(1)
                continue
            open_details += line.count("<details") - line.count("</details>")
        elif _closes_fence(line, open_fence):
            open_fence = None

    closers = []
    if open_fence is not None:
        closers.append(open_fence)
    closers.extend(["</details>"] * max(0, open_details))
    return "".join(f"{line}\n" for line in closers)


def _closes_fence(line: str, fence: str) -> bool:
    """Return whether ``line`` closes the code block opened by ``fence``: the same character, at least as many."""
    indent = len(line) - len(line.lstrip(" "))
    marks = line.strip()
    return indent <= 3 and len(marks) >= len(fence) and set(marks) == {fence[0]}
