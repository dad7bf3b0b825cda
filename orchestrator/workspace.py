"""The working directory of one shard, kept between runs so that ``init`` runs only when needed.

Layout of ``.orchestrator/shards/<account>/<deployment>/<service>/``: the module's files, the
generated backend and provider files, the shard's variable file, Lambda packages, and
``.orchestrator-init`` with the digest of everything ``init`` depends on.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import threading
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from .backend import BACKEND_FILE_NAME, PROVIDER_FILE_NAME, backend_config, backend_document, provider_config, provider_document
from .credentials import STATE_PROFILE, WORKLOAD_PROFILE
from .discovery import SERVICE_FILE_NAME, SERVICE_SCHEMA_FILE_NAME, Shard
from .errors import OrchestratorError
from .settings import Settings

VAR_FILE_NAME = "orchestrator.tfvars.json"
INIT_MARKER_NAME = ".orchestrator-init"
LOCK_FILE_NAME = ".orchestrator-lock"
MANIFEST_NAME = ".orchestrator-files"
PACKAGES_DIR_NAME = "packages"
NOT_COPIED = {SERVICE_FILE_NAME, SERVICE_SCHEMA_FILE_NAME, ".terraform", ".terraform.lock.hcl", "README.md"}

# A fixed timestamp makes the zip of unchanged sources byte-identical between runs.
ZIP_TIMESTAMP = (1980, 1, 1, 0, 0, 0)


class PackagingError(OrchestratorError):
    """A folder to package for a shard is missing or outside the repository."""


@dataclass(frozen=True)
class Workspace:
    directory: Path
    var_file: Path
    init_digest: str
    inputs_digest: str

    @property
    def needs_init(self) -> bool:
        marker = self.directory / INIT_MARKER_NAME
        if not (self.directory / ".terraform" / "terraform.tfstate").exists():
            return True
        if not (self.directory / ".terraform.lock.hcl").exists():
            return True
        return not marker.exists() or marker.read_text(encoding="utf-8").strip() != self.init_digest

    def record_init(self) -> None:
        (self.directory / INIT_MARKER_NAME).write_text(self.init_digest + "\n", encoding="utf-8")


def shard_directory(settings: Settings, shard: Shard) -> Path:
    return settings.work_dir / "shards" / shard.account.name / shard.deployment.name / shard.service.name


class WorkspaceWaitInterrupted(OrchestratorError):
    """The run was interrupted while it waited for another run of the same shard."""


@contextmanager
def workspace_lock(directory: Path, on_wait: Callable[[], None], cancelled: threading.Event) -> Iterator[None]:
    """Hold the shard's working directory for this process; wait while another run of this checkout has it.

    Two runs in one checkout would otherwise rewrite the same files and run init in the same
    folder at the same time. Runs on other machines are kept apart by the state lock instead.
    """
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / LOCK_FILE_NAME, "w", encoding="utf-8") as handle:
        waiting = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waiting:
                    on_wait()
                    waiting = True
                if cancelled.wait(0.5):
                    raise WorkspaceWaitInterrupted(f"interrupted while waiting for another run of {directory}")
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _module_files(module_dir: Path) -> list[Path]:
    files = []
    for path in sorted(module_dir.rglob("*")):
        relative = path.relative_to(module_dir)
        if path.is_file() and not any(part in NOT_COPIED or part == "__pycache__" for part in relative.parts):
            files.append(path)
    return files


def _sync_module(module_dir: Path, directory: Path) -> list[str]:
    """Copy the module into ``directory`` and delete files a previous version of it left behind."""
    manifest_path = directory / MANIFEST_NAME
    previous = set(manifest_path.read_text(encoding="utf-8").split("\n")) if manifest_path.exists() else set()
    current = []
    for source in _module_files(module_dir):
        relative = source.relative_to(module_dir).as_posix()
        target = directory / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists() or target.read_bytes() != source.read_bytes():
            shutil.copyfile(source, target)
        current.append(relative)
    for stale in previous - set(current) - {""}:
        (directory / stale).unlink(missing_ok=True)
    manifest_path.write_text("\n".join(current), encoding="utf-8")
    return current


def _write_if_changed(path: Path, text: str, mode: int | None = None) -> None:
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return
    if mode is None:
        path.write_text(text, encoding="utf-8")
        return
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(text)


def build_package(source_dir: Path, zip_path: Path) -> None:
    """Zip ``source_dir`` deterministically: sorted entries, fixed timestamps and permissions."""
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    temporary = zip_path.with_suffix(".zip.tmp")
    with zipfile.ZipFile(temporary, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(source_dir.rglob("*")):
            if path.is_dir() or "__pycache__" in path.parts or path.suffix == ".pyc":
                continue
            info = zipfile.ZipInfo(path.relative_to(source_dir).as_posix(), date_time=ZIP_TIMESTAMP)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, path.read_bytes())
    if zip_path.exists() and zip_path.read_bytes() == temporary.read_bytes():
        temporary.unlink()
    else:
        temporary.replace(zip_path)


def _build_packages(shard: Shard, repo_root: Path, directory: Path) -> None:
    built: set[str] = set()
    for package in shard.service.packages:
        entries = shard.values.get(package.key) or {}
        for name, entry in entries.items():
            relative = entry.get(package.source_field) if isinstance(entry, dict) else None
            position = shard.deployment.document.position_of((package.key, name, package.source_field))
            where = f"{shard.deployment.path}:{position.line}:{position.column}: {package.key}.{name}.{package.source_field}"
            if not isinstance(relative, str) or not relative:
                raise PackagingError(f"{where} is missing; set it to the folder of the function's source, relative to the repository root")
            source = (repo_root / relative).resolve()
            if not source.is_relative_to(repo_root):
                raise PackagingError(f"{where} = {relative!r} points outside the repository; use a folder inside it")
            if not source.is_dir():
                raise PackagingError(f"{where} = {relative!r} is not a folder; create it or fix the path (relative to the repository root)")
            build_package(source, directory / PACKAGES_DIR_NAME / f"{name}.zip")
            built.add(f"{name}.zip")

    # A function removed from the deployment file leaves its zip behind; it must not count as an input.
    for leftover in (directory / PACKAGES_DIR_NAME).glob("*.zip"):
        if leftover.name not in built:
            leftover.unlink()


def _digest(parts: list[tuple[str, bytes]]) -> str:
    hasher = hashlib.sha256()
    for name, content in parts:
        hasher.update(name.encode() + b"\0" + hashlib.sha256(content).digest())
    return hasher.hexdigest()


def write_generated_files(directory: Path, shard: Shard, settings: Settings, sandbox_endpoint: str | None) -> tuple[str, str]:
    """Write the shard's backend and provider files into ``directory``; return their text."""
    backend_text = json.dumps(backend_document(backend_config(settings.state, shard.state_key, shard.region, STATE_PROFILE, sandbox_endpoint)), indent=2, sort_keys=True)
    provider_text = json.dumps(provider_document(provider_config(shard.region, shard.account_id, WORKLOAD_PROFILE, sandbox_endpoint)), indent=2, sort_keys=True)
    _write_if_changed(directory / BACKEND_FILE_NAME, backend_text + "\n")
    _write_if_changed(directory / PROVIDER_FILE_NAME, provider_text + "\n")
    return backend_text, provider_text


def write_values(directory: Path, values: dict) -> str:
    """Write the variable file (owner-only: values may hold secrets); return its text."""
    var_text = json.dumps(values, indent=2, sort_keys=True, ensure_ascii=False)
    _write_if_changed(directory / VAR_FILE_NAME, var_text + "\n", mode=0o600)
    return var_text


def module_file_names(directory: Path) -> list[str]:
    """Return the module files last copied into a shard's working directory."""
    manifest = directory / MANIFEST_NAME
    return [name for name in manifest.read_text(encoding="utf-8").split("\n") if name] if manifest.exists() else []


def prepare_workspace(shard: Shard, settings: Settings, sandbox_endpoint: str | None, cli_config_text: str) -> Workspace:
    """Create or refresh the shard's working directory and compute its digests."""
    directory = shard_directory(settings, shard)
    directory.mkdir(parents=True, exist_ok=True)
    module_files = _sync_module(shard.service.module_dir, directory)

    backend_text, provider_text = write_generated_files(directory, shard, settings, sandbox_endpoint)
    var_text = write_values(directory, shard.values)
    _build_packages(shard, settings.repo_root, directory)

    module_parts = [(name, (directory / name).read_bytes()) for name in module_files]
    init_digest = _digest(module_parts + [("backend", backend_text.encode()), ("cli-config", cli_config_text.encode())])
    package_parts = [(p.name, p.read_bytes()) for p in sorted((directory / PACKAGES_DIR_NAME).glob("*.zip"))] if shard.service.packages else []
    inputs_digest = _digest(module_parts + package_parts + [("backend", backend_text.encode()), ("provider", provider_text.encode()), ("values", var_text.encode())])
    return Workspace(directory=directory, var_file=directory / VAR_FILE_NAME, init_digest=init_digest, inputs_digest=inputs_digest)
