"""Credentials per account: the base identity assumes each account's deploy role and the state role.

Terraform gets none of the caller's ``AWS_*`` variables. The orchestrator resolves the base
identity itself (in CI, OIDC web identity through boto3's default chain), assumes the roles,
and writes the temporary credentials to a credentials file of the run (mode 0600) with two
profiles: ``workload`` for the provider and ``state`` for the backend.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import boto3
import botocore.credentials
import botocore.session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

from .errors import OrchestratorError

WORKLOAD_PROFILE = "workload"
STATE_PROFILE = "state"

# Fixed keys for the sandbox: moto accepts any, and they can never be mistaken for real ones.
SANDBOX_ACCESS_KEY_ID = "AKIASANDBOXEXAMPLE00"
SANDBOX_SECRET_ACCESS_KEY = "sandbox-secret-not-a-real-key"

SESSION_DURATION_SECONDS = 3600


class CredentialsError(OrchestratorError):
    """The base identity is missing or a role could not be assumed."""


class SandboxUnreachable(OrchestratorError):
    """The sandbox endpoint does not respond."""


@dataclass(frozen=True)
class AwsTarget:
    """Destination of AWS API calls: real AWS (``endpoint`` None) or the sandbox on loopback."""

    endpoint: str | None = None

    @property
    def is_sandbox(self) -> bool:
        return self.endpoint is not None


@dataclass(frozen=True)
class TemporaryCredentials:
    access_key_id: str
    secret_access_key: str
    session_token: str | None

    def as_client_kwargs(self) -> dict:
        return {
            "aws_access_key_id": self.access_key_id,
            "aws_secret_access_key": self.secret_access_key,
            "aws_session_token": self.session_token,
        }


_CLIENT_CONFIG = Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=60)


def base_credentials(target: AwsTarget, instance_metadata: bool = False) -> TemporaryCredentials:
    """Resolve the identity that assumes every other role.

    boto3's usual chain is used (environment, profiles, SSO, OIDC web identity, containers),
    except the EC2 instance metadata endpoint unless ``instance_metadata`` is set: a runner
    that is not on EC2 would otherwise send requests to a link-local address.
    """
    if target.is_sandbox:
        return TemporaryCredentials(SANDBOX_ACCESS_KEY_ID, SANDBOX_SECRET_ACCESS_KEY, None)

    resolver = botocore.credentials.create_credential_resolver(botocore.session.Session())
    if not instance_metadata:
        resolver.remove("iam-role")
    resolved = resolver.load_credentials()
    if resolved is None:
        raise CredentialsError(
            "no AWS credentials found for the base identity; in CI configure OIDC role assumption "
            "(AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE), locally log in with aws sso login or "
            "set a profile, on EC2 set credentials.instance_metadata = true in orchestrator.toml, or use --sandbox"
        )
    frozen = resolved.get_frozen_credentials()
    return TemporaryCredentials(frozen.access_key, frozen.secret_key, frozen.token)


# Clients built from explicit credentials read no profile, config file or endpoint variable of
# the caller, so a stray AWS_PROFILE or AWS_ENDPOINT_URL cannot redirect or break them.
_ISOLATED_SESSION_VARIABLES = {
    "profile": (None, None, None, None),
    "config_file": (None, None, os.devnull, None),
    "credentials_file": (None, None, os.devnull, None),
    "ignore_configured_endpoint_urls": (None, None, True, None),
}


def aws_client(service: str, credentials: TemporaryCredentials, region: str, target: AwsTarget):
    """Create a boto3 client for ``service`` with explicit credentials, region and endpoint."""
    session = boto3.Session(botocore_session=botocore.session.Session(session_vars=_ISOLATED_SESSION_VARIABLES))
    return session.client(
        service,
        region_name=region,
        endpoint_url=target.endpoint,
        config=_CLIENT_CONFIG,
        **credentials.as_client_kwargs(),
    )


def assume_role(base: TemporaryCredentials, role_arn: str, session_name: str, region: str, target: AwsTarget) -> TemporaryCredentials:
    """Assume ``role_arn`` with the base identity and return its temporary credentials."""
    sts = aws_client("sts", base, region, target)
    try:
        response = sts.assume_role(RoleArn=role_arn, RoleSessionName=session_name, DurationSeconds=SESSION_DURATION_SECONDS)
    except EndpointConnectionError as error:
        if target.is_sandbox:
            raise SandboxUnreachable(f"the sandbox at {target.endpoint} does not respond; start it with invoke sandbox.up or pass --sandbox") from error
        raise CredentialsError(f"could not reach AWS STS to assume {role_arn}: {error}") from error
    except (ClientError, BotoCoreError) as error:
        raise CredentialsError(f"could not assume {role_arn}: {error}; check that the role exists and trusts the base identity") from error
    issued = response["Credentials"]
    return TemporaryCredentials(issued["AccessKeyId"], issued["SecretAccessKey"], issued["SessionToken"])


def role_session_name(run_id: str) -> str:
    """Return a session name that identifies the run in CloudTrail (at most 64 allowed characters)."""
    return re.sub(r"[^\w+=,.@-]", "-", f"tdo-{run_id}")[:64]


def _profile_text(profile: str, credentials: TemporaryCredentials) -> str:
    lines = [f"[{profile}]", f"aws_access_key_id = {credentials.access_key_id}", f"aws_secret_access_key = {credentials.secret_access_key}"]
    if credentials.session_token:
        lines.append(f"aws_session_token = {credentials.session_token}")
    return "\n".join(lines) + "\n"


def write_private_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by the owner only, never briefly readable by others."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(path, 0o600)


class CredentialBroker:
    """Assume each account's deploy role once per run and hand out credentials files."""

    def __init__(self, target: AwsTarget, state_role_arn: str, run_id: str, directory: Path, sts_region: str, instance_metadata: bool = False):
        self.target = target
        self.instance_metadata = instance_metadata
        self.state_role_arn = state_role_arn
        self.session_name = role_session_name(run_id)
        self.directory = directory
        self.sts_region = sts_region
        self._lock = threading.Lock()
        self._base: TemporaryCredentials | None = None
        self._state: TemporaryCredentials | None = None
        self._files: dict[str, Path] = {}

    def base(self) -> TemporaryCredentials:
        if self._base is None:
            self._base = base_credentials(self.target, self.instance_metadata)
        return self._base

    def state_credentials(self) -> TemporaryCredentials:
        """Return credentials for the state bucket: the state role, or the base identity when none is set."""
        with self._lock:
            if self._state is None:
                if self.state_role_arn:
                    self._state = assume_role(self.base(), self.state_role_arn, self.session_name, self.sts_region, self.target)
                else:
                    self._state = self.base()
            return self._state

    def credentials_file(self, account_name: str, deploy_role_arn: str) -> Path:
        """Return the credentials file of one account, assuming its role on first use."""
        state = self.state_credentials()
        with self._lock:
            if account_name not in self._files:
                workload = assume_role(self.base(), deploy_role_arn, self.session_name, self.sts_region, self.target)
                path = self.directory / f"{account_name}.credentials"
                write_private_file(path, _profile_text(WORKLOAD_PROFILE, workload) + "\n" + _profile_text(STATE_PROFILE, state))
                self._files[account_name] = path
            return self._files[account_name]

    def remove_files(self) -> None:
        """Delete the credentials files written by this broker."""
        for path in self._files.values():
            path.unlink(missing_ok=True)
        self._files.clear()
