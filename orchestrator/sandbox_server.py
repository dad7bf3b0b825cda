"""The sandbox's server process: moto's AWS emulator on loopback, with optional injected latency.

Run as ``python -m orchestrator.sandbox_server --port N [--latency-ms MS]``; ``sandbox.py``
starts and stops it. The latency is added to every request, to emulate real AWS round trips
in benchmarks.
"""

from __future__ import annotations

import argparse
import threading
import time

from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import run_simple

LOOPBACK = "127.0.0.1"


class SerializedApp:
    """WSGI wrapper that lets one request at a time into moto.

    moto finds a request's account by searching its IAM backends for the access key, and
    concurrent requests of different accounts were seen landing in the wrong one (an IAM role
    "already exists" in an account that had none). Moto's own work per request is a few
    milliseconds, so serialising it costs little; injected latency stays outside the lock.
    """

    def __init__(self, app):
        self.app = app
        self._lock = threading.Lock()

    def __call__(self, environ, start_response):
        with self._lock:
            # The body is read inside the lock, because moto may build it lazily.
            return list(self.app(environ, start_response))


class LatencyMiddleware:
    """WSGI middleware that sleeps before passing each request on."""

    def __init__(self, app, latency_seconds: float):
        self.app = app
        self.latency_seconds = latency_seconds

    def __call__(self, environ, start_response):
        time.sleep(self.latency_seconds)
        return self.app(environ, start_response)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve the AWS sandbox (moto) on 127.0.0.1.")
    parser.add_argument("--port", type=int, required=True, help="TCP port on 127.0.0.1")
    parser.add_argument("--latency-ms", type=int, default=0, help="delay added to every request, in milliseconds")
    args = parser.parse_args(argv)

    app = SerializedApp(DomainDispatcherApplication(create_backend_app))
    if args.latency_ms > 0:
        app = LatencyMiddleware(app, args.latency_ms / 1000)

    run_simple(LOOPBACK, args.port, app, threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()
