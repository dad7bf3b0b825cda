"""Repository settings: one TOML file at the top of the repo, validated by a JSON Schema.

Every key has a default that works against the embedded sandbox, so a fresh checkout needs
no settings file at all. A team's generated repo writes its own names into it.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import jsonschema

from .errors import ConfigurationError

SETTINGS_FILE_NAME = "orchestrator.toml"
TOOLS_DIR_ENVIRONMENT_VARIABLE = "ORCHESTRATOR_TOOLS_DIR"

DEFAULTS: dict = {
    "terraform": {
        "binary": "terraform",
        "provider_mirror": "",
        "lock_timeout": "5m",
        "command_timeout_minutes": 60,
        "workers": 5,
    },
    "state": {
        "bucket": "tdo-tfstate-{region}",
        "region": "{region}",
        "role_arn": "arn:aws:iam::111111111111:role/terraform-state",
        "lock": "lockfile",
        "dynamodb_table": "tdo-terraform-locks",
        "kms_key_id": "",
    },
    "audit": {
        "bucket": "tdo-terraform-audit",
        "region": "eu-west-1",
        "kms_key_id": "",
    },
    "sandbox": {
        "host": "127.0.0.1",
        "port": 5480,
        "latency_ms": 0,
    },
    "credentials": {
        "instance_metadata": False,
    },
    "redaction": {
        "extra_patterns": [],
    },
    "policy": {
        "opa": True,
        "opa_engine": "auto",
        "checkov": True,
        "checkov_skip": [],
        "checkov_soft_fail": [],
        "checkov_severity_threshold": "",
    },
    "paths": {
        "accounts": "Accounts",
        "modules": "modules",
        "policies": "policies",
        "work": ".orchestrator",
    },
}


@dataclass(frozen=True)
class TerraformSettings:
    binary: str
    provider_mirror: str
    lock_timeout: str
    command_timeout_minutes: int
    workers: int


@dataclass(frozen=True)
class StateSettings:
    bucket: str
    region: str
    role_arn: str
    lock: str
    dynamodb_table: str
    kms_key_id: str

    def bucket_for(self, region: str) -> str:
        """Return the state bucket that stores the state of shards deployed to ``region``."""
        return self.bucket.format(region=region)

    def region_for(self, region: str) -> str:
        """Return the region of the state bucket for shards deployed to ``region``."""
        return self.region.format(region=region)


@dataclass(frozen=True)
class AuditSettings:
    bucket: str
    region: str
    kms_key_id: str


@dataclass(frozen=True)
class SandboxSettings:
    host: str
    port: int
    latency_ms: int

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass(frozen=True)
class CredentialSettings:
    instance_metadata: bool


@dataclass(frozen=True)
class RedactionSettings:
    extra_patterns: list


@dataclass(frozen=True)
class PolicySettings:
    opa: bool
    opa_engine: str
    checkov: bool
    checkov_skip: list
    checkov_soft_fail: list
    checkov_severity_threshold: str


@dataclass(frozen=True)
class PathSettings:
    accounts: str
    modules: str
    policies: str
    work: str


@dataclass(frozen=True)
class Settings:
    repo_root: Path
    terraform: TerraformSettings
    state: StateSettings
    audit: AuditSettings
    sandbox: SandboxSettings
    credentials: CredentialSettings
    policy: PolicySettings
    redaction: RedactionSettings
    paths: PathSettings

    @property
    def accounts_dir(self) -> Path:
        return self.repo_root / self.paths.accounts

    @property
    def modules_dir(self) -> Path:
        return self.repo_root / self.paths.modules

    @property
    def policies_dir(self) -> Path:
        return self.repo_root / self.paths.policies

    @property
    def work_dir(self) -> Path:
        return self.repo_root / self.paths.work

    @property
    def tools_dir(self) -> Path:
        """Folder of tool environments (Checkov); ORCHESTRATOR_TOOLS_DIR shares one between checkouts."""
        configured = os.environ.get(TOOLS_DIR_ENVIRONMENT_VARIABLE)
        return Path(configured) if configured else self.work_dir / "tools"


def _merge(defaults: dict, overrides: dict) -> dict:
    merged = copy.deepcopy(defaults)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


@functools.lru_cache(maxsize=None)
def load_schema(name: str) -> dict:
    """Load one of the JSON Schemas shipped in ``orchestrator/schemas/``, once per process.

    Callers must not modify the returned dict, because it is shared.
    """
    text = resources.files("orchestrator").joinpath("schemas", name).read_text(encoding="utf-8")
    return json.loads(text)


def load_settings(repo_root: Path, overrides: dict | None = None) -> Settings:
    """Read ``orchestrator.toml`` under ``repo_root`` (if present), apply defaults and validate.

    ``overrides`` has the same shape as the file and wins over it; the CLI uses it for flags
    such as ``--workers``.
    """
    repo_root = Path(repo_root).resolve()
    settings_path = repo_root / SETTINGS_FILE_NAME
    from_file: dict = {}
    if settings_path.exists():
        try:
            from_file = tomllib.loads(settings_path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as error:
            raise ConfigurationError(f"{settings_path}: invalid TOML: {error}") from error

    merged = _merge(DEFAULTS, from_file)
    if overrides:
        merged = _merge(merged, overrides)

    validator = jsonschema.Draft202012Validator(load_schema("settings.schema.json"))
    problems = sorted(validator.iter_errors(merged), key=lambda error: list(error.path))
    if problems:
        lines = [f"{settings_path}: {'.'.join(map(str, p.path)) or '(top level)'}: {p.message}" for p in problems]
        raise ConfigurationError("invalid settings:\n  " + "\n  ".join(lines))

    for pattern in merged["redaction"]["extra_patterns"]:
        try:
            re.compile(pattern)
        except re.error as error:
            raise ConfigurationError(f"{settings_path}: redaction.extra_patterns: {pattern!r} is not a valid regular expression ({error}); fix or remove it")

    return Settings(
        repo_root=repo_root,
        terraform=TerraformSettings(**merged["terraform"]),
        state=StateSettings(**merged["state"]),
        audit=AuditSettings(**merged["audit"]),
        sandbox=SandboxSettings(**merged["sandbox"]),
        credentials=CredentialSettings(**merged["credentials"]),
        policy=PolicySettings(**merged["policy"]),
        redaction=RedactionSettings(**merged["redaction"]),
        paths=PathSettings(**merged["paths"]),
    )
