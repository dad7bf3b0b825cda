"""The embedded AWS sandbox: the moto server on 127.0.0.1, started, checked and stopped here.

``up`` starts ``orchestrator.sandbox_server`` as a detached process, waits until it responds,
and creates what a real landing zone would have: one versioned, encrypted state bucket per
region in the state account, the audit bucket with a 90-day lifecycle, and (when the
settings ask for DynamoDB locking) the lock table. The server keeps everything in memory,
so ``down`` discards all sandbox resources.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from botocore.exceptions import ClientError

from .credentials import AwsTarget, CredentialsError, assume_role, aws_client, base_credentials, role_session_name
from .errors import OrchestratorError
from .settings import Settings

logger = logging.getLogger(__name__)

STARTUP_TIMEOUT_SECONDS = 30
STOP_TIMEOUT_SECONDS = 10
AUDIT_RETENTION_DAYS = 90


class SandboxError(OrchestratorError):
    """The sandbox could not be started, reached or stopped."""


@dataclass(frozen=True)
class SandboxStatus:
    running: bool
    endpoint: str
    pid: int | None
    latency_ms: int
    detail: str


def _state_file(settings: Settings) -> Path:
    return settings.work_dir / "sandbox" / "server.json"


def _log_file(settings: Settings) -> Path:
    return settings.work_dir / "sandbox" / "server.log"


def _answers(endpoint: str, timeout: float = 2.0) -> bool:
    """Return True when an HTTP server responds at ``endpoint``, whatever the status."""
    # No proxy: the sandbox is on loopback, and a configured proxy must never see its traffic.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{endpoint}/moto-api/", timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError):
        return False


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _read_state(settings: Settings) -> dict | None:
    path = _state_file(settings)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None


def status(settings: Settings) -> SandboxStatus:
    """Report whether the sandbox of this repository runs and responds."""
    endpoint = settings.sandbox.endpoint
    recorded = _read_state(settings)
    if recorded and recorded.get("port") == settings.sandbox.port and _process_alive(recorded["pid"]):
        if _answers(endpoint):
            return SandboxStatus(True, endpoint, recorded["pid"], recorded.get("latency_ms", 0), "running")
        return SandboxStatus(False, endpoint, recorded["pid"], 0, "process exists but does not respond")
    if _answers(endpoint):
        # Started by another checkout or by hand: usable, but not ours to stop.
        return SandboxStatus(True, endpoint, None, 0, "responding (not started by this checkout)")
    return SandboxStatus(False, endpoint, None, 0, "not running")


def up(settings: Settings) -> SandboxStatus:
    """Start the sandbox unless it already runs, then create the state and audit buckets."""
    current = status(settings)
    if not current.running:
        if _port_in_use(settings.sandbox.port):
            raise SandboxError(
                f"port {settings.sandbox.port} on 127.0.0.1 is in use by another program that is not the sandbox; "
                "stop that program or choose another port with --port or sandbox.port in orchestrator.toml"
            )
        current = _start(settings)
    bootstrap(settings)
    return current


def _start(settings: Settings) -> SandboxStatus:
    log_path = _log_file(settings)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "orchestrator.sandbox_server", "--port", str(settings.sandbox.port), "--latency-ms", str(settings.sandbox.latency_ms)]
    environment = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    # AWS managed policies (arn:aws:iam::aws:policy/...) exist in moto only when it loads them.
    environment["MOTO_IAM_LOAD_MANAGED_POLICIES"] = "true"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=environment, start_new_session=True)

    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_path.read_text(encoding="utf-8", errors="replace")[-2000:]
            raise SandboxError(f"the sandbox server exited with code {process.returncode} while starting; its log ({log_path}) ends with:\n{tail}")
        if _answers(settings.sandbox.endpoint, timeout=1.0):
            break
        time.sleep(0.2)
    else:
        process.terminate()
        raise SandboxError(f"the sandbox server did not respond on {settings.sandbox.endpoint} within {STARTUP_TIMEOUT_SECONDS} s; see {log_path}")

    record = {"pid": process.pid, "port": settings.sandbox.port, "latency_ms": settings.sandbox.latency_ms, "started": time.time()}
    _state_file(settings).write_text(json.dumps(record), encoding="utf-8")
    logger.info("sandbox started on %s (pid %s)", settings.sandbox.endpoint, process.pid)
    return SandboxStatus(True, settings.sandbox.endpoint, process.pid, settings.sandbox.latency_ms, "running")


def down(settings: Settings) -> bool:
    """Stop the sandbox started by this checkout; return False when none was running."""
    recorded = _read_state(settings)
    if not recorded or not _process_alive(recorded["pid"]):
        _state_file(settings).unlink(missing_ok=True)
        return False

    pid = recorded["pid"]
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    while time.monotonic() < deadline and _process_alive(pid):
        time.sleep(0.1)
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
    if _process_alive(pid):
        os.kill(pid, signal.SIGKILL)
    _state_file(settings).unlink(missing_ok=True)
    logger.info("sandbox stopped (pid %s)", pid)
    return True


def state_regions(settings: Settings) -> list[str]:
    """Return every region some account may deploy to: each gets its own state bucket."""
    from .discovery import load_accounts

    accounts, _ = load_accounts(settings)
    regions = {region for account in accounts.values() for region in account.regions}
    return sorted(regions | {settings.audit.region})


def bootstrap(settings: Settings, target: AwsTarget | None = None) -> list[str]:
    """Create the state buckets, the audit bucket and the optional lock tables; return what exists now.

    Without ``target`` this works on the sandbox. With a real AWS target it is the one-time
    set-up of a new organisation (``invoke bootstrap``), run with the state role. Every step
    is idempotent, so running it again only re-applies the settings.
    """
    target = target or AwsTarget(endpoint=settings.sandbox.endpoint)
    where = "in the sandbox" if target.is_sandbox else "in AWS"
    base = base_credentials(target, settings.credentials.instance_metadata)
    try:
        state = assume_role(base, settings.state.role_arn, role_session_name("bootstrap"), settings.audit.region, target) if settings.state.role_arn else base
    except CredentialsError as error:
        raise SandboxError(f"could not assume the state role {settings.state.role_arn} {where}: {error}") from error

    created = []
    buckets = {settings.state.bucket_for(region): settings.state.region_for(region) for region in state_regions(settings)}
    for bucket, region in sorted(buckets.items()):
        _ensure_bucket(aws_client("s3", state, region, target), bucket, region, lifecycle_days=None)
        created.append(f"state bucket {bucket} ({region}): versioning, encryption, public access blocked")
    _ensure_bucket(aws_client("s3", state, settings.audit.region, target), settings.audit.bucket, settings.audit.region, lifecycle_days=AUDIT_RETENTION_DAYS)
    created.append(f"audit bucket {settings.audit.bucket} ({settings.audit.region}): encryption, {AUDIT_RETENTION_DAYS}-day expiry")

    if settings.state.lock == "dynamodb":
        # The backend looks for the table in the state bucket's region, so each region gets one.
        for region in sorted(set(buckets.values())):
            _ensure_lock_table(aws_client("dynamodb", state, region, target), settings.state.dynamodb_table)
            created.append(f"lock table {settings.state.dynamodb_table} ({region})")
    return created


def _ensure_lock_table(dynamodb, table: str) -> None:
    try:
        dynamodb.create_table(
            TableName=table,
            KeySchema=[{"AttributeName": "LockID", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "LockID", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
    except ClientError as error:
        if error.response["Error"]["Code"] != "ResourceInUseException":
            raise


def _ensure_bucket(s3, bucket: str, region: str, lifecycle_days: int | None) -> None:
    try:
        if region == "us-east-1":
            s3.create_bucket(Bucket=bucket)
        else:
            s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region})
    except ClientError as error:
        if error.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise

    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    s3.put_bucket_encryption(
        Bucket=bucket,
        ServerSideEncryptionConfiguration={"Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]},
    )
    s3.put_public_access_block(
        Bucket=bucket,
        PublicAccessBlockConfiguration={"BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True, "RestrictPublicBuckets": True},
    )
    if lifecycle_days:
        s3.put_bucket_lifecycle_configuration(
            Bucket=bucket,
            # The bucket is versioned, so expired objects leave non-current versions that need a rule of their own.
            LifecycleConfiguration={"Rules": [{
                "ID": "audit-retention", "Status": "Enabled", "Filter": {"Prefix": ""},
                "Expiration": {"Days": lifecycle_days}, "NoncurrentVersionExpiration": {"NoncurrentDays": lifecycle_days},
            }]},
        )
