"""State backups and recorded configurations, kept in the shard's state bucket.

Layout under the state bucket of a shard's region (``<key>`` is the shard's state key):

- ``backups/<key>/<backup id>/terraform.tfstate``: the state as ``terraform state pull`` gave
  it before an apply (absent when the shard had no state yet);
- ``backups/<key>/<backup id>/configuration.tar.gz``: the configuration that produced that
  state, so a rollback needs no git history (CI clones are often shallow);
- ``backups/<key>/<backup id>/metadata.json``: time, run id, serial, lineage, sha256, git
  revisions and digests;
- ``configurations/<key>/last-good.tar.gz`` and ``last-good.json``: the configuration of the
  last apply that succeeded, copied into each new backup.

A backup id is ``<UTC time>-<run id>-<reason>``, so ids sort by time. Every object is written
with server-side encryption (KMS when ``state.kms_key_id`` is set), because a state contains secrets.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import json
import tarfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

from botocore.exceptions import ClientError

from .discovery import Shard
from .errors import OrchestratorError

BACKUPS_PREFIX = "backups"
CONFIGURATIONS_PREFIX = "configurations"
STATE_OBJECT = "terraform.tfstate"
CONFIGURATION_OBJECT = "configuration.tar.gz"
METADATA_OBJECT = "metadata.json"

# Inside a configuration bundle: module files at the top, referenced repository files under
# ``repo/`` and the shard's values in ``values.json``.
BUNDLE_VALUES = "values.json"
BUNDLE_REPO_DIR = "repo"
BUNDLE_MANIFEST = "bundle.json"

# Reference kinds whose value is a path in the repository (iam-policy-text is inline text).
PATH_REFERENCE_KINDS = ("file", "directory", "iam-policy", "iam-resource-policy")


class BackupError(OrchestratorError):
    """A backup could not be taken, read or verified; the apply that needed it does not start."""


@dataclass(frozen=True)
class StateSnapshot:
    """A pulled state: its bytes and the facts a backup records about it."""

    raw: bytes
    serial: int | None = None
    lineage: str | None = None
    terraform_version: str | None = None
    addresses: tuple[str, ...] = ()

    @property
    def exists(self) -> bool:
        return bool(self.raw.strip())

    @property
    def empty(self) -> bool:
        """True when the state manages no resource (or there is no state object at all)."""
        return not self.addresses

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()

    @classmethod
    def parse(cls, raw: bytes, where: str) -> "StateSnapshot":
        """Parse ``terraform state pull`` output; an empty output means no state yet."""
        if not raw.strip():
            return cls(raw=b"")
        try:
            document = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise BackupError(f"{where}: the pulled state is not valid JSON ({error}); nothing was applied") from error
        if isinstance(document, dict) and document.get("lineage") == "" and not document.get("resources"):
            return cls(raw=b"")  # Terraform's empty placeholder for a backend without a state object
        if not isinstance(document, dict) or "lineage" not in document or "serial" not in document:
            raise BackupError(f"{where}: the pulled state has no lineage or serial, so it is not a Terraform state; nothing was applied")
        if not isinstance(document["serial"], int) or isinstance(document["serial"], bool):
            raise BackupError(f"{where}: the pulled state's serial {document['serial']!r} is not a number, so the state is damaged; nothing was applied")
        return cls(
            raw=raw,
            serial=document["serial"],
            lineage=str(document["lineage"]),
            terraform_version=document.get("terraform_version"),
            addresses=tuple(state_addresses(document)),
        )


def state_addresses(document: dict) -> list[str]:
    """Return the address of every managed resource instance in a state document."""
    addresses = []
    for resource in document.get("resources", []):
        if resource.get("mode") != "managed":
            continue
        base = f"{resource['module']}.{resource['type']}.{resource['name']}" if resource.get("module") else f"{resource['type']}.{resource['name']}"
        for instance in resource.get("instances", []):
            key = instance.get("index_key")
            if key is None:
                addresses.append(base)
            elif isinstance(key, int):
                addresses.append(f"{base}[{key}]")
            else:
                addresses.append(f"{base}[{json.dumps(key)}]")
    return sorted(addresses)


def with_serial(raw: bytes, serial: int) -> bytes:
    """Return the state ``raw`` with its serial replaced, lineage and everything else kept."""
    document = json.loads(raw)
    document["serial"] = serial
    return (json.dumps(document, indent=2) + "\n").encode()


# --- configuration bundles ----------------------------------------------------------------------

def _referenced_paths(shard: Shard) -> list[str]:
    """Return the repository-relative files and folders the shard's values point at."""
    paths: set[str] = set()
    for reference in shard.service.references:
        if reference.get("kind") not in PATH_REFERENCE_KINDS:
            continue
        entries = shard.values.get(reference["key"])
        if not isinstance(entries, dict):
            continue
        for entry in entries.values():
            if not isinstance(entry, dict):
                continue
            value = entry.get(reference["field"])
            if isinstance(value, str):
                candidates = [value]
            elif isinstance(value, list):
                candidates = value
            else:
                candidates = []
            paths.update(relative for relative in candidates if isinstance(relative, str) and relative)
    return sorted(paths)


def _add_bytes(archive: tarfile.TarFile, name: str, content: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(content)
    info.mode = 0o600
    info.mtime = 0  # the same configuration gives the same bundle bytes
    archive.addfile(info, io.BytesIO(content))


def build_bundle(shard: Shard, workspace_dir: Path, module_files: list[str], repo_root: Path, git_revision: str) -> tuple[bytes, dict]:
    """Pack what reproduces the shard's configuration; return the bundle and its digests."""
    repo_root = repo_root.resolve()
    values_bytes = json.dumps(shard.values, indent=2, sort_keys=True, ensure_ascii=False).encode()
    module_hasher = hashlib.sha256()
    buffer = io.BytesIO()
    # gzip stores the current time in its header by default, so mtime=0 keeps bundles of one configuration identical.
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as compressed, tarfile.open(fileobj=compressed, mode="w") as archive:
        for name in sorted(module_files):
            content = (workspace_dir / name).read_bytes()
            module_hasher.update(name.encode() + b"\0" + hashlib.sha256(content).digest())
            _add_bytes(archive, name, content)
        for package in sorted((workspace_dir / "packages").glob("*.zip")):
            _add_bytes(archive, f"packages/{package.name}", package.read_bytes())
        for relative in _referenced_paths(shard):
            source = (repo_root / relative).resolve()
            if not source.is_relative_to(repo_root):
                continue  # validation already refused it; never pack a file outside the repo
            if source.is_dir():
                files = sorted(path for path in source.rglob("*") if path.is_file())
            elif source.is_file():
                files = [source]
            else:
                files = []
            for path in files:
                _add_bytes(archive, f"{BUNDLE_REPO_DIR}/{path.relative_to(repo_root).as_posix()}", path.read_bytes())
        digests = {
            "values_sha256": hashlib.sha256(values_bytes).hexdigest(),
            "module_sha256": module_hasher.hexdigest(),
            "git_revision": git_revision,
            "shard": shard.id,
            "module": shard.service.name,
        }
        _add_bytes(archive, BUNDLE_VALUES, values_bytes)
        _add_bytes(archive, BUNDLE_MANIFEST, json.dumps(digests, indent=2, sort_keys=True).encode())
    return buffer.getvalue(), digests


def extract_bundle(bundle: bytes, directory: Path) -> dict:
    """Unpack a bundle into ``directory``; return the shard values, pointed at the unpacked files."""
    directory.mkdir(parents=True, exist_ok=True)
    root = directory.resolve()
    with tarfile.open(fileobj=io.BytesIO(bundle), mode="r:gz") as archive:
        for member in archive.getmembers():
            relative = PurePosixPath(member.name)
            target = (root / relative).resolve()
            if not member.isfile() or relative.is_absolute() or ".." in relative.parts or not target.is_relative_to(root):
                raise BackupError(f"configuration bundle entry {member.name!r} is not a plain relative file; the bundle is damaged")
            target.parent.mkdir(parents=True, exist_ok=True)
            # Owner-only: the values and referenced files may contain secrets.
            descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(archive.extractfile(member).read())
    values_path = root / BUNDLE_VALUES
    values = json.loads(values_path.read_text(encoding="utf-8"))
    values_path.unlink()
    # Files the values refer to are read from the bundle, not from today's checkout.
    values["repo_root"] = str(root / BUNDLE_REPO_DIR)
    return values


# --- the store in S3 ----------------------------------------------------------------------------

@dataclass
class Backup:
    backup_id: str
    metadata: dict = field(default_factory=dict)

    @property
    def created(self) -> str:
        return self.metadata.get("timestamp", "")


def new_backup_id(run_id: str, reason: str, now: datetime | None = None) -> str:
    now = now or datetime.now(timezone.utc)
    return f"{now.strftime('%Y%m%dT%H%M%S%fZ')}-{run_id}-{reason}"


class BackupStore:
    """Backups and recorded configurations of one shard in its state bucket."""

    def __init__(self, s3, bucket: str, state_key: str, kms_key_id: str = "", shard_id: str = "<shard>"):
        self.s3 = s3
        self.bucket = bucket
        self.state_key = state_key
        self.kms_key_id = kms_key_id
        self.shard_id = shard_id

    # --- keys ---

    def backup_prefix(self, backup_id: str = "") -> str:
        return f"{BACKUPS_PREFIX}/{self.state_key}/" + (f"{backup_id}/" if backup_id else "")

    @property
    def last_good_key(self) -> str:
        return f"{CONFIGURATIONS_PREFIX}/{self.state_key}/last-good.tar.gz"

    @property
    def last_good_metadata_key(self) -> str:
        return f"{CONFIGURATIONS_PREFIX}/{self.state_key}/last-good.json"

    # --- objects ---

    def _encryption(self) -> dict:
        if self.kms_key_id:
            return {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": self.kms_key_id}
        return {"ServerSideEncryption": "AES256"}

    def _put(self, key: str, body: bytes, content_type: str) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType=content_type, **self._encryption())

    def _get(self, key: str) -> bytes | None:
        try:
            return self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return None
            raise

    # --- backups ---

    def create(self, snapshot: StateSnapshot, backup_id: str, metadata: dict, produced_by: tuple[bytes, dict] | None = None) -> Backup:
        """Store ``snapshot`` with its metadata and the configuration that produced it; verify the copy.

        That configuration is the last good one, unless ``produced_by`` (a bundle and its digests)
        names another, such as the configuration of an apply that just failed.
        """
        prefix = self.backup_prefix(backup_id)
        metadata = dict(metadata)
        metadata.update(
            {
                "backup_id": backup_id,
                "state_key": self.state_key,
                "bucket": self.bucket,
                "empty": snapshot.empty,
                "serial": snapshot.serial,
                "lineage": snapshot.lineage,
                "sha256": snapshot.sha256 if snapshot.exists else None,
                "size": len(snapshot.raw),
                "resources": list(snapshot.addresses),
                "terraform_version": snapshot.terraform_version,
            }
        )
        try:
            if snapshot.exists:
                self._put(prefix + STATE_OBJECT, snapshot.raw, "application/json")
                stored = self._get(prefix + STATE_OBJECT) or b""
                if hashlib.sha256(stored).hexdigest() != snapshot.sha256:
                    raise BackupError(f"backup {prefix + STATE_OBJECT} in {self.bucket} does not read back as written (sha256 differs); nothing was applied")
                StateSnapshot.parse(stored, f"backup {prefix + STATE_OBJECT}")

            last_good = self.last_good()
            metadata["configuration"] = None
            if produced_by is not None:
                self._put(prefix + CONFIGURATION_OBJECT, produced_by[0], "application/gzip")
                metadata["configuration"] = produced_by[1]
            elif last_good is not None:
                self.s3.copy_object(
                    Bucket=self.bucket,
                    Key=prefix + CONFIGURATION_OBJECT,
                    CopySource={"Bucket": self.bucket, "Key": self.last_good_key},
                    **self._encryption(),
                )
                metadata["configuration"] = last_good
            self._put(prefix + METADATA_OBJECT, json.dumps(metadata, indent=2, sort_keys=True).encode(), "application/json")
        except ClientError as error:
            raise BackupError(f"cannot write the backup to s3://{self.bucket}/{prefix}: {error}; nothing was applied") from error
        return Backup(backup_id, metadata)

    def list(self) -> list[Backup]:
        """Return the shard's backups, oldest first."""
        backups = []
        paginator = self.s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.backup_prefix()):
            for item in page.get("Contents", []):
                if item["Key"].endswith("/" + METADATA_OBJECT):
                    backup_id = item["Key"][len(self.backup_prefix()):].split("/", 1)[0]
                    metadata = json.loads(self._get(item["Key"]) or b"{}")
                    backups.append(Backup(backup_id, metadata))
        return sorted(backups, key=lambda backup: backup.backup_id)

    def get(self, backup_id: str) -> Backup:
        raw = self._get(self.backup_prefix(backup_id) + METADATA_OBJECT)
        if raw is None:
            raise BackupError(f"no backup {backup_id!r} for state {self.state_key} in {self.bucket}; list them with: invoke backups --shard {self.shard_id} (add --sandbox for the sandbox)")
        return Backup(backup_id, json.loads(raw))

    def state_of(self, backup: Backup) -> StateSnapshot:
        if not backup.metadata.get("sha256"):
            return StateSnapshot(raw=b"")
        key = self.backup_prefix(backup.backup_id) + STATE_OBJECT
        raw = self._get(key)
        if raw is None:
            raise BackupError(f"backup {backup.backup_id} has no state object {key}; the backup is incomplete")
        snapshot = StateSnapshot.parse(raw, f"backup {key}")
        if snapshot.sha256 != backup.metadata.get("sha256"):
            raise BackupError(f"backup {key} does not match the sha256 recorded with it; it was changed after it was taken")
        return snapshot

    def configuration_of(self, backup: Backup) -> bytes | None:
        """Return the configuration bundle recorded with a backup, or None when it has none."""
        if not backup.metadata.get("configuration"):
            return None
        return self._get(self.backup_prefix(backup.backup_id) + CONFIGURATION_OBJECT)

    # --- the last good configuration ---

    def last_good(self) -> dict | None:
        raw = self._get(self.last_good_metadata_key)
        return json.loads(raw) if raw else None

    def last_good_bundle(self) -> bytes | None:
        return self._get(self.last_good_key)

    def record_good(self, bundle: bytes, metadata: dict) -> None:
        """Record ``bundle`` as the configuration of the last apply that succeeded."""
        self._put(self.last_good_key, bundle, "application/gzip")
        self._put(self.last_good_metadata_key, json.dumps(metadata, indent=2, sort_keys=True).encode(), "application/json")
