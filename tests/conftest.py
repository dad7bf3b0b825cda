"""Shared fixtures: an isolated HOME and environment, template repositories, a sandbox of the tests' own."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# Every test repository shares the Checkov environment that invoke test sets up, instead of
# installing its own (about 30 s each). Set at import because module fixtures run early.
os.environ.setdefault("ORCHESTRATOR_TOOLS_DIR", str(PROJECT_ROOT / ".orchestrator" / "tools"))


@pytest.fixture(autouse=True)
def isolated_environment(tmp_path_factory, monkeypatch):
    """Give every test its own HOME and no AWS_* or TF_* variables of the caller."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    for name in list(os.environ):
        if name.startswith(("AWS_", "TF_")):
            monkeypatch.delenv(name, raising=False)
    # Tests talk to the sandbox on 127.0.0.1 only; this keeps boto3 away from the metadata address.
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    yield home


# The example accounts the tests run against: at the top of the template, and under
# tests/example-repo in a team repository generated from it (whose own accounts differ).
GENERATED_EXAMPLES = PROJECT_ROOT / "tests" / "example-repo"
EXAMPLE_ROOT = GENERATED_EXAMPLES if GENERATED_EXAMPLES.is_dir() else PROJECT_ROOT


def copy_template(destination: Path) -> Path:
    """Copy the example repository (accounts, Lambda sources, settings, modules, policies) to ``destination``."""
    for name, root in (("Accounts", EXAMPLE_ROOT), ("functions", EXAMPLE_ROOT), ("modules", PROJECT_ROOT), ("policies", PROJECT_ROOT)):
        source = root / name
        if source.exists():
            shutil.copytree(source, destination / name, ignore=shutil.ignore_patterns(".terraform", "__pycache__"))
    settings = EXAMPLE_ROOT / "orchestrator.toml"
    if settings.exists():
        shutil.copy(settings, destination / "orchestrator.toml")
    return destination


@pytest.fixture
def template_repo(tmp_path) -> Path:
    """A copy of the template repository in a temporary folder."""
    return copy_template(tmp_path / "repo")


def write_settings(repo: Path, extra: str) -> None:
    """Append ``extra`` TOML to the repository's settings, keeping the template's policy lists."""
    settings = repo / "orchestrator.toml"
    existing = settings.read_text() if settings.exists() else ""
    settings.write_text(existing + "\n" + extra + "\n")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def git(repo: Path, *args: str) -> str:
    completed = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True,
                               env={**os.environ, "GIT_AUTHOR_NAME": "Test", "GIT_AUTHOR_EMAIL": "test@example.invalid", "GIT_COMMITTER_NAME": "Test", "GIT_COMMITTER_EMAIL": "test@example.invalid"})
    return completed.stdout
