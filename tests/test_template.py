"""The cookiecutter template: generate a team repository, install it, run its tests and a plan.

The generated repository's shared parts must be the template's files, byte for byte, and its
per-team parts must come from the template variables.
"""

from __future__ import annotations

import filecmp
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cookiecutter.exceptions import FailedHookException
from cookiecutter.main import cookiecutter

from conftest import PROJECT_ROOT, free_port

TEAM = {
    "team_name": "Payments team",
    "accounts": "payments-dev:444444444444:dev,payments-prod:555555555555:prod",
    "state_account_id": "666666666666",
    "default_region": "eu-central-1",
}
SHARED_FILES = ["tasks.py", "pyproject.toml", ".gitignore", "docs/state-safety.md", "docs/audit.md"]
SHARED_FOLDERS = ["orchestrator", "modules", "policies"]


def generate(output: Path, **extra) -> Path:
    return Path(cookiecutter(str(PROJECT_ROOT), no_input=True, output_dir=str(output), extra_context={**TEAM, **extra}))


def tracked_files(folder: Path) -> set[str]:
    ignored = {"__pycache__", ".terraform", ".orchestrator"}
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and not ignored & set(p.parts) and p.suffix != ".pyc"}


def test_generated_repository_layout(tmp_path):
    repo = generate(tmp_path)
    assert repo.name == "payments-team-infrastructure"

    for name in SHARED_FILES:
        assert filecmp.cmp(PROJECT_ROOT / name, repo / name, shallow=False), name
    for name in SHARED_FOLDERS:
        assert tracked_files(repo / name) == tracked_files(PROJECT_ROOT / name), name
    assert "test_template.py" not in {p.name for p in (repo / "tests").iterdir()}
    assert (repo / "tests" / "example-repo" / "Accounts" / "staging" / "account.json").exists()

    accounts = {folder.name: json.loads((folder / "account.json").read_text()) for folder in (repo / "Accounts").iterdir()}
    assert set(accounts) == {"payments-dev", "payments-prod"}
    assert accounts["payments-prod"]["account_id"] == "555555555555"
    assert accounts["payments-prod"]["regions"] == ["eu-central-1"]

    settings = (repo / "orchestrator.toml").read_text()
    assert 'bucket = "payments-team-infrastructure-tfstate-{region}"' in settings
    assert "arn:aws:iam::666666666666:role/terraform-state" in settings
    assert "checkov_skip" in settings

    workflows = {p.name: p.read_text() for p in (repo / ".github" / "workflows").glob("*.yml")}
    assert {"plan.yml", "apply.yml", "drift.yml"} <= set(workflows)
    for name, text in workflows.items():
        assert "__AWS_" not in text, name
        assert "__PYTHON_VERSION__" not in text, name
    assert "arn:aws:iam::666666666666:role/github-actions-terraform" in workflows["plan.yml"]

    for path in repo.rglob("*"):
        if path.is_file() and path.suffix in (".md", ".toml", ".json", ".tfvars", ".yml", ".py"):
            assert "{{ cookiecutter" not in path.read_text(errors="replace"), path


@pytest.mark.parametrize("value", [
    {"accounts": "payments-dev:4444:dev"},
    {"accounts": "payments-dev:444444444444:qa"},
    {"team_name": "Data & ML team"},
    {"state_bucket_prefix": "a-very-long-state-bucket-prefix-that-leaves-no-room-for-regions"},
    {"state_account_id": "12"},
    {"default_region": "mars-1"},
    {"deploy_role_name": "bad role"},
    {"cost_centre": ""},
])
def test_bad_value_stops_generation(tmp_path, value):
    with pytest.raises(FailedHookException):
        generate(tmp_path, **value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.terraform
def test_generated_repository_installs_tests_and_plans(tmp_path):
    repo = generate(tmp_path, accounts="payments-dev:444444444444:dev")
    # The generated repository's own sandbox on a free port, so it never meets another one.
    with open(repo / "orchestrator.toml", "a", encoding="utf-8") as settings:
        settings.write(f"\n[sandbox]\nport = {free_port()}\n")

    environment = {key: value for key, value in os.environ.items() if not key.startswith(("VIRTUAL_ENV", "PYTHONPATH"))}
    subprocess.run([sys.executable, "-m", "venv", ".venv"], cwd=repo, check=True)
    python = repo / ".venv" / "bin" / "python"
    installed = subprocess.run([str(python), "-m", "pip", "install", "-q", "-e", ".[dev]"], cwd=repo, env=environment, capture_output=True, text=True)
    assert installed.returncode == 0, installed.stderr[-3000:]

    invoke = [str(python), "-m", "invoke"]
    tests = subprocess.run(invoke + ["test", "--fast"], cwd=repo, env=environment, capture_output=True, text=True, timeout=600)
    assert tests.returncode == 0, tests.stdout[-3000:] + tests.stderr[-3000:]
    assert " passed" in tests.stdout

    try:
        plan = subprocess.run(invoke + ["plan", "--all", "--sandbox"], cwd=repo, env=environment, capture_output=True, text=True, timeout=600)
        assert plan.returncode == 0, plan.stdout[-3000:] + plan.stderr[-3000:]
        assert "payments-dev/baseline/s3" in plan.stdout
        assert "planned" in plan.stdout
    finally:
        subprocess.run(invoke + ["sandbox.down"], cwd=repo, env=environment, capture_output=True)
