"""Selection: which shards a run covers, from --all, changed files, a git range and filters.

What a changed path selects:

- a deployment file: its shards;
- anything under ``modules/<service>/``: every shard of that service;
- an ``account.json``: the account's shards;
- the policies or the repo settings: every shard;
- a file a deployment file references (an IAM policy document, a Lambda source folder): the
  shards that reference it.
"""

from __future__ import annotations

import difflib
import fnmatch
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .discovery import Inventory, Shard
from .errors import SelectionError
from .settings import SETTINGS_FILE_NAME, Settings

GLOB_CHARACTERS = set("*?[")


@dataclass
class SelectionRequest:
    all: bool = False
    changed_files: list[str] = field(default_factory=list)
    since: str | None = None
    deployments: list[str] = field(default_factory=list)
    accounts: list[str] = field(default_factory=list)
    services: list[str] = field(default_factory=list)
    regions: list[str] = field(default_factory=list)

    @property
    def by_change(self) -> bool:
        return bool(self.changed_files or self.since)

    def describe(self) -> str:
        parts = []
        if self.all:
            parts.append("--all")
        if self.changed_files:
            parts.append("--changed-files " + " ".join(self.changed_files))
        if self.since:
            parts.append(f"--since {self.since}")
        for flag, values in (("--deployment", self.deployments), ("--account", self.accounts), ("--service", self.services), ("--region", self.regions)):
            parts += [f"{flag} {value}" for value in values]
        return " ".join(parts) or "(no selection flags)"


def normalise_changed_path(raw: str, repo_root: Path) -> str:
    """Return ``raw`` as a repo-relative POSIX path or glob; reject anything that leaves the repo."""
    text = raw.strip().replace("\\", "/")
    if not text:
        raise SelectionError("an empty path was given to --changed-files")
    if text.startswith("/") or (len(text) > 1 and text[1] == ":"):
        candidate = Path(text)
        try:
            text = candidate.resolve().relative_to(repo_root).as_posix()
        except ValueError:
            raise SelectionError(f"--changed-files {raw!r} is outside the repository {repo_root}; give paths relative to the repository root") from None
    parts = PurePosixPath(text).parts
    if ".." in parts:
        raise SelectionError(f"--changed-files {raw!r} contains '..'; give paths inside the repository, relative to its root")
    while text.startswith("./"):
        text = text[2:]

    if not GLOB_CHARACTERS & set(text):
        resolved = (repo_root / text).resolve() if (repo_root / text).is_symlink() or (repo_root / text).exists() else None
        if resolved is not None and not resolved.is_relative_to(repo_root):
            raise SelectionError(f"--changed-files {raw!r} is a link that leads outside the repository; it is not accepted")
    return text


def git_changed_files(repo_root: Path, since: str) -> list[str]:
    """Return files changed since ``since`` (committed, staged, unstaged and untracked)."""
    def git(*args: str) -> list[str]:
        completed = subprocess.run(["git", *args], cwd=repo_root, capture_output=True, text=True, env={**os.environ, "GIT_PAGER": "cat"})
        if completed.returncode != 0:
            raise SelectionError(f"git {' '.join(args)} failed: {completed.stderr.strip()}; check that {since!r} is a commit, branch or tag of this repository (CI clones may need fetch-depth: 0)")
        return [line for line in completed.stdout.splitlines() if line]

    changed = git("diff", "--name-only", since)
    changed += git("ls-files", "--others", "--exclude-standard")
    return sorted(set(changed))


def _string_leaves(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in _string_leaves(item)]
    if isinstance(value, list):
        return [leaf for item in value for leaf in _string_leaves(item)]
    return []


def shards_for_changes(inventory: Inventory, settings: Settings, changed: list[str]) -> list[Shard]:
    """Return the shards affected by changed paths (paths or globs relative to the repo root)."""
    accounts_prefix = settings.paths.accounts.rstrip("/") + "/"
    modules_prefix = settings.paths.modules.rstrip("/") + "/"
    policies_prefix = settings.paths.policies.rstrip("/") + "/"
    selected: dict[str, Shard] = {}

    def matches(pattern: str, path: str) -> bool:
        return fnmatch.fnmatchcase(path, pattern) or path.startswith(pattern.rstrip("/") + "/")

    for pattern in changed:
        for shard in inventory.shards:
            module_path = f"{modules_prefix}{shard.service.name}/"
            account_file = f"{accounts_prefix}{shard.account.name}/account.json"
            hit = (
                matches(pattern, shard.deployment.path)
                or matches(pattern, account_file)
                or pattern.startswith(module_path)
                or fnmatch.fnmatchcase(module_path + "main.tf", pattern)
                or pattern.startswith(policies_prefix)
                or pattern == SETTINGS_FILE_NAME
                or any(pattern == leaf or pattern.startswith(leaf.rstrip("/") + "/") for leaf in _string_leaves(shard.values) if "/" in leaf)
            )
            if hit:
                selected[shard.id] = shard
    return [shard for shard in inventory.shards if shard.id in selected]


def _check_known(flag: str, requested: list[str], known: set[str]) -> None:
    for value in requested:
        if value not in known:
            close = difflib.get_close_matches(value, sorted(known), n=1)
            hint = f" Did you mean {close[0]}?" if close else ""
            raise SelectionError(f"{flag} {value}: no such {flag.lstrip('-')}.{hint} Known: {', '.join(sorted(known)) or '(none)'}")


def select_shards(inventory: Inventory, settings: Settings, request: SelectionRequest) -> list[Shard]:
    """Apply the selection flags to the inventory; unknown names are errors with suggestions."""
    _check_known("--account", request.accounts, set(inventory.accounts))
    _check_known("--service", request.services, set(inventory.services))
    _check_known("--region", request.regions, {r for a in inventory.accounts.values() for r in a.regions})

    if request.all:
        candidates = list(inventory.shards)
    elif request.by_change:
        changed = [normalise_changed_path(p, settings.repo_root) for p in request.changed_files]
        if request.since:
            changed += git_changed_files(settings.repo_root, request.since)
        candidates = shards_for_changes(inventory, settings, changed)
    elif request.deployments:
        candidates = []
    elif request.accounts or request.services or request.regions:
        candidates = list(inventory.shards)
    else:
        raise SelectionError("nothing to select: pass --all, --changed-files PATH…, --since GIT_REF or --deployment SHARD_ID (optionally narrowed by --account, --service, --region)")

    if request.deployments:
        by_id = {shard.id: shard for shard in inventory.shards}
        chosen: dict[str, Shard] = {}
        for wanted in request.deployments:
            wanted = wanted.strip("/")
            matched = [s for s in inventory.shards if s.id == wanted or s.deployment.id == wanted]
            if not matched:
                close = difflib.get_close_matches(wanted, sorted(set(by_id) | {s.deployment.id for s in inventory.shards}), n=3)
                hint = f" Did you mean {', '.join(close)}?" if close else " List shards with: invoke shards"
                raise SelectionError(f"--deployment {wanted}: no such deployment or shard.{hint}")
            chosen.update((s.id, s) for s in matched)
        if request.all or request.by_change:
            candidates = [s for s in candidates if s.id in chosen]
        else:
            candidates = [s for s in inventory.shards if s.id in chosen]

    return [
        shard
        for shard in candidates
        if (not request.accounts or shard.account.name in request.accounts)
        and (not request.services or shard.service.name in request.services)
        and (not request.regions or shard.region in request.regions)
    ]


def shard_dependencies(shards: list[Shard]) -> dict[str, set[str]]:
    """Return, for each shard id, the ids of selected shards that must finish before it.

    A shard waits for the shards of the services its service depends on, in the same account
    and region, or in any region of that account when the prerequisite service is global.
    """
    dependencies: dict[str, set[str]] = {shard.id: set() for shard in shards}
    for shard in shards:
        for other in shards:
            if other.service.name not in shard.service.depends_on or other.account_id != shard.account_id:
                continue
            if other.region == shard.region or other.service.is_global:
                dependencies[shard.id].add(other.id)
    return dependencies
