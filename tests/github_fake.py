"""A fake of GitHub's issue-comment API for one repository, served on 127.0.0.1 for tests.

It stores comments with ids, creation times and ``html_url``, paginates lists with ``Link``
headers, checks the bearer token, and rejects bodies longer than 65,536 characters with GitHub's
422 response. ``fail_next`` makes the next requests fail with a chosen status. Every request is recorded, with
the Authorization header reduced to its scheme so that no test output contains the token.
"""

from __future__ import annotations

import json
import threading
import urllib.parse
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMENT_MAX_CHARACTERS = 65_536

_FAILURE_MESSAGES = {500: "Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    # Request headers by lower-case name, without Authorization, whose scheme alone is in ``authorization_scheme``.
    headers: dict[str, str]
    authorization_scheme: str | None
    body: dict | None


@dataclass
class _InjectedFailure:
    status: int
    # None fails every request until clear_failures().
    remaining: int | None
    headers: dict[str, str] = field(default_factory=dict)
    # None fails requests of every method.
    method: str | None = None


class FakeGitHub:
    """GitHub's issue-comment endpoints for ``repository``, for the pull requests in ``pull_requests``.

    ``path_prefix`` serves the API below a path, as GitHub Enterprise Server does with ``/api/v3``.
    ``page_size`` caps every page of a list, whatever ``per_page`` the client sends.
    ``link_base``, when set, replaces ``http://127.0.0.1:PORT`` in the ``Link`` header's URLs, to
    test that the client follows no link to another origin.
    """

    def __init__(self, token: str, repository: str = "octo-org/infra", pull_requests: tuple[int, ...] = (7,),
                 page_size: int = 30, path_prefix: str = ""):
        self.token = token
        self.repository = repository
        self.pull_requests = set(pull_requests)
        self.page_size = page_size
        self.path_prefix = path_prefix.rstrip("/")
        self.link_base: str | None = None
        self.requests: list[RecordedRequest] = []
        self._comments: dict[int, dict] = {}
        self._next_id = 1001
        self._clock = datetime(2024, 1, 1, tzinfo=timezone.utc)
        self._failures: list[_InjectedFailure] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        # A short poll interval makes shutdown() return quickly at teardown.
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02},
                                        name="fake-github", daemon=True)

    # --- Lifecycle ---

    def start(self) -> FakeGitHub:
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path_prefix}"

    # --- Test controls ---

    def fail_next(self, count: int | None, status: int = 500, headers: dict[str, str] | None = None,
                  method: str | None = None) -> None:
        """Fail the next ``count`` requests (every request when None) with ``status``, only those of ``method`` if given."""
        with self._lock:
            self._failures.append(_InjectedFailure(status, count, dict(headers or {}), method))

    def clear_failures(self) -> None:
        with self._lock:
            self._failures.clear()

    def add_comment(self, pr_number: int, body: str) -> dict:
        """Store a comment as if someone had posted it, and return it."""
        with self._lock:
            return self._create_comment(pr_number, body)

    def comments(self, pr_number: int) -> list[dict]:
        """Return the comments of ``pr_number`` in creation order."""
        with self._lock:
            return [dict(comment) for comment in self._comments.values() if comment["issue_number"] == pr_number]

    def requests_by_method(self, method: str) -> list[RecordedRequest]:
        return [request for request in self.requests if request.method == method]

    # --- The API ---

    def _create_comment(self, pr_number: int, body: str) -> dict:
        comment_id = self._next_id
        self._next_id += 1
        # One second per comment keeps creation times distinct and ordered.
        self._clock += timedelta(seconds=1)
        stamp = self._clock.strftime("%Y-%m-%dT%H:%M:%SZ")
        comment = {
            "id": comment_id,
            "issue_number": pr_number,
            "body": body,
            "created_at": stamp,
            "updated_at": stamp,
            "html_url": f"http://127.0.0.1:{self.port}/{self.repository}/pull/{pr_number}#issuecomment-{comment_id}",
            "user": {"login": "github-actions[bot]", "type": "Bot"},
        }
        self._comments[comment_id] = comment
        return dict(comment)

    def _respond(self, method: str, path: str, query: dict[str, str], body: dict | None, authorization: str | None):
        """Return (status, JSON-compatible body, extra headers) for one request."""
        injected = self._take_failure(method)
        if injected is not None:
            message = _FAILURE_MESSAGES.get(injected.status, "Injected failure")
            return injected.status, {"message": message}, injected.headers

        if authorization != f"Bearer {self.token}":
            return 401, {"message": "Bad credentials"}, {}

        if not path.startswith(self.path_prefix + "/"):
            return 404, {"message": "Not Found"}, {}
        segments = path[len(self.path_prefix):].strip("/").split("/")
        if len(segments) < 5 or segments[0] != "repos" or f"{segments[1]}/{segments[2]}" != self.repository or segments[3] != "issues":
            return 404, {"message": "Not Found"}, {}
        route = segments[4:]

        if len(route) == 2 and route[1] == "comments" and route[0].isdigit():
            pr_number = int(route[0])
            if pr_number not in self.pull_requests:
                return 404, {"message": "Not Found"}, {}
            if method == "GET":
                return self._list_comments(path, pr_number, query)
            if method == "POST":
                problem = _body_problem(body)
                if problem:
                    return 422, problem, {}
                return 201, self._create_comment(pr_number, body["body"]), {}

        if len(route) == 2 and route[0] == "comments" and route[1].isdigit():
            comment = self._comments.get(int(route[1]))
            if comment is None:
                return 404, {"message": "Not Found"}, {}
            if method == "PATCH":
                problem = _body_problem(body)
                if problem:
                    return 422, problem, {}
                self._clock += timedelta(seconds=1)
                comment["body"] = body["body"]
                comment["updated_at"] = self._clock.strftime("%Y-%m-%dT%H:%M:%SZ")
                return 200, dict(comment), {}
            if method == "DELETE":
                del self._comments[comment["id"]]
                return 204, None, {}

        return 404, {"message": "Not Found"}, {}

    def _list_comments(self, path: str, pr_number: int, query: dict[str, str]):
        per_page = min(int(query.get("per_page", "30")), 100, self.page_size)
        page = max(1, int(query.get("page", "1")))
        comments = [dict(c) for c in self._comments.values() if c["issue_number"] == pr_number]
        last_page = max(1, -(-len(comments) // per_page))
        chosen = comments[(page - 1) * per_page: page * per_page]

        def page_url(number: int) -> str:
            base = self.link_base or f"http://127.0.0.1:{self.port}"
            return f"{base}{path}?per_page={per_page}&page={number}"

        links = []
        if page < last_page:
            links += [f'<{page_url(page + 1)}>; rel="next"', f'<{page_url(last_page)}>; rel="last"']
        if page > 1:
            links += [f'<{page_url(page - 1)}>; rel="prev"', f'<{page_url(1)}>; rel="first"']
        return 200, chosen, ({"Link": ", ".join(links)} if links else {})

    def _take_failure(self, method: str) -> _InjectedFailure | None:
        for failure in self._failures:
            if failure.method not in (None, method):
                continue
            if failure.remaining is not None:
                failure.remaining -= 1
                if failure.remaining <= 0:
                    self._failures.remove(failure)
            return failure
        return None

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        split = urllib.parse.urlsplit(handler.path)
        query = dict(urllib.parse.parse_qsl(split.query))
        length = int(handler.headers.get("Content-Length") or 0)
        raw_body = handler.rfile.read(length) if length else b""
        try:
            body = json.loads(raw_body) if raw_body else None
        except ValueError:
            body = None

        authorization = handler.headers.get("Authorization")
        with self._lock:
            self.requests.append(RecordedRequest(
                method=handler.command,
                path=split.path,
                query=query,
                headers={name.lower(): value for name, value in handler.headers.items() if name.lower() != "authorization"},
                authorization_scheme=authorization.split(" ", 1)[0] if authorization else None,
                body=body,
            ))
            status, response_body, extra_headers = self._respond(handler.command, split.path, query, body, authorization)

        payload = b"" if response_body is None else json.dumps(response_body).encode("utf-8")
        handler.send_response(status)
        if payload:
            handler.send_header("Content-Type", "application/json; charset=utf-8")
        handler.send_header("Content-Length", str(len(payload)))
        for name, value in extra_headers.items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(payload)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                fake._handle(self)

            do_POST = do_PATCH = do_DELETE = do_GET

            def log_message(self, format, *args):
                # The test output stays free of one line per request.
                pass

        return Handler


def _body_problem(body: dict | None) -> dict | None:
    """Return GitHub's 422 response body for a missing or too long comment body, or None for a valid one."""
    if not isinstance(body, dict) or not isinstance(body.get("body"), str):
        return {"message": "Invalid request.", "errors": ['"body" wasn\'t supplied.']}
    if len(body["body"]) > COMMENT_MAX_CHARACTERS:
        return {
            "message": "Validation Failed",
            "errors": [{
                "resource": "IssueComment",
                "code": "custom",
                "field": "body",
                "message": f"body is too long (maximum is {COMMENT_MAX_CHARACTERS} characters)",
            }],
        }
    return None
