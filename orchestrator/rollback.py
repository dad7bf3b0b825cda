"""Rollback: converge a shard back to a configuration recorded with a backup.

Restoring the pre-apply state file after a failed apply would make Terraform forget what the
apply created, while those resources keep existing. A rollback therefore applies the last
good configuration against the current state instead: Terraform destroys what the failed
apply created and changes back what it changed. When no configuration was recorded because
the failed apply was the shard's first one, the good configuration is "no resources" and the
rollback is a destroy plan of the current state.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .backups import extract_bundle
from .discovery import Shard
from .settings import Settings
from .workspace import write_generated_files, write_values

ROLLED_BACK = "rolled back"
PARTLY_ROLLED_BACK = "partly rolled back"
ROLLBACK_FAILED = "rollback failed"
NOT_ROLLED_BACK = "not rolled back"

# Working-directory entries kept between rollbacks: the providers init linked or installed.
KEPT_ON_RESET = {".terraform", ".terraform.lock.hcl"}


@dataclass
class RollbackOutcome:
    status: str
    target: str
    backup_id: str | None = None
    created_by_failed_apply: list[str] = field(default_factory=list)
    planned: list[dict] = field(default_factory=list)
    not_converged: list[dict] = field(default_factory=list)
    error: str = ""

    def as_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        """Return one line for the summary and the progress output."""
        if self.status == ROLLED_BACK:
            return f"{ROLLED_BACK} to {self.target}: {len(self.planned)} change(s) undone"
        if self.status == NOT_ROLLED_BACK:
            return f"{NOT_ROLLED_BACK}: {self.error}"
        left = ", ".join(f"{item['address']} ({'/'.join(item['actions'])})" for item in self.not_converged) or "unknown, see the log"
        reason = f" ({self.error.splitlines()[0]})" if self.error else ""
        return f"{self.status} towards {self.target}{reason}; not where it should be: {left}"


def planned_changes(plan: dict) -> list[dict]:
    """Return the address and actions of every resource a plan would touch."""
    changes = []
    for change in plan.get("resource_changes", []):
        actions = change.get("change", {}).get("actions", [])
        if actions and actions not in (["no-op"], ["read"]):
            changes.append({"address": change["address"], "actions": actions})
    return changes


def rollback_directory(settings: Settings, shard: Shard) -> Path:
    return settings.work_dir / "rollback" / shard.account.name / shard.deployment.name / shard.service.name


def prepare_rollback_directory(settings: Settings, shard: Shard, bundle: bytes, sandbox_endpoint: str | None) -> Path:
    """Unpack a recorded configuration into the shard's rollback directory, ready for init."""
    directory = rollback_directory(settings, shard)
    if directory.exists():
        for entry in directory.iterdir():
            if entry.name in KEPT_ON_RESET:
                continue
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    values = extract_bundle(bundle, directory)
    write_generated_files(directory, shard, settings, sandbox_endpoint)
    write_values(directory, values)
    return directory
