"""Finish a generated team repository: copy the shared parts, write accounts and workflows.

Cookiecutter renders only the per-team files of ``{{ '{{' }}cookiecutter.repo_name{{ '}}' }}/``.
Everything shared (the orchestrator, tasks.py, modules, policies, the orchestrator's tests and
docs) is copied here from the template checkout, so the template keeps each file once.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

CONTEXT = json.loads(r"""{{ cookiecutter | jsonify }}""")

# Copied from the template checkout as they are.
SHARED_PARTS = ["orchestrator", "tasks.py", "modules", "policies", "tests", "pyproject.toml", ".gitignore", "docs/state-safety.md", "docs/audit.md"]
# The template's own examples: the copied tests run against them, not against the team's accounts.
EXAMPLE_PARTS = ["Accounts", "functions", "orchestrator.toml"]
# Only meaningful in the template itself.
NOT_COPIED = shutil.ignore_patterns("__pycache__", "*.pyc", ".terraform", ".orchestrator", "*.egg-info", ".pytest_cache", "test_template.py", "test_workflow_template.py")

ACCOUNT_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
ACCOUNT_ID = re.compile(r"^[0-9]{12}$")
ENVIRONMENTS = ("shared", "dev", "staging", "prod")
# S3 bucket names: 3 to 63 lower-case letters, digits, dots and hyphens. A hyphen and a region
# name follow the state prefix, and region names such as ap-southeast-3 have 14 characters.
BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
REGION_SUFFIX_LENGTH = len("-ap-southeast-3")
REGION = re.compile(r"^[a-z]{2}(-gov)?-[a-z]+-[0-9]$")
ROLE_NAME = re.compile(r"^[A-Za-z0-9+=,.@_-]{1,64}$")


# Written without double braces: this file is itself a Jinja template.
STARTER_DEPLOYMENT = """# A first deployment of ACCOUNT: one versioned, encrypted bucket. Replace it with your own.
project = "baseline"
region  = "REGION"

tags = {
  Owner      = "OWNER"
  CostCentre = "COST_CENTRE"
}

s3_buckets = {
  artifacts = {
    versioning = true
  }
}
"""


class GenerationError(Exception):
    """A template value cannot make a working repository."""


def parse_accounts(text: str) -> list[tuple[str, str, str]]:
    """Parse ``name:account id:environment`` entries separated by commas."""
    accounts = []
    for entry in filter(None, (part.strip() for part in text.split(","))):
        fields = entry.split(":")
        if len(fields) != 3:
            raise GenerationError(f"accounts entry {entry!r} must be name:account id:environment, for example staging:222222222222:staging")
        name, account_id, environment = (field.strip() for field in fields)
        if not ACCOUNT_NAME.match(name):
            raise GenerationError(f"account name {name!r} must be lower-case letters, digits and hyphens")
        if not ACCOUNT_ID.match(account_id):
            raise GenerationError(f"account id {account_id!r} of {name} must be 12 digits")
        if environment not in ENVIRONMENTS:
            raise GenerationError(f"environment {environment!r} of {name} must be one of {', '.join(ENVIRONMENTS)}")
        accounts.append((name, account_id, environment))
    if not accounts:
        raise GenerationError("accounts is empty; give at least one name:account id:environment")
    names = [name for name, _, _ in accounts]
    if len(set(names)) != len(names):
        raise GenerationError(f"accounts lists a name twice: {', '.join(sorted(n for n in set(names) if names.count(n) > 1))}")
    return accounts


def check_values() -> None:
    """Reject values that would generate a repository whose buckets, roles or regions AWS refuses."""
    prefix, audit = CONTEXT["state_bucket_prefix"], CONTEXT["audit_bucket"]
    if not BUCKET_NAME.match(prefix) or len(prefix) + REGION_SUFFIX_LENGTH > 63:
        raise GenerationError(
            f"state_bucket_prefix {prefix!r} must be lower-case letters, digits, dots and hyphens, at most {63 - REGION_SUFFIX_LENGTH} "
            "characters (a region name follows it); set state_bucket_prefix, or a shorter repo_name"
        )
    if not BUCKET_NAME.match(audit):
        raise GenerationError(f"audit_bucket {audit!r} must be 3 to 63 lower-case letters, digits, dots and hyphens; set audit_bucket")
    if not ACCOUNT_ID.match(CONTEXT["state_account_id"]):
        raise GenerationError(f"state_account_id {CONTEXT['state_account_id']!r} must be 12 digits")
    if not REGION.match(CONTEXT["default_region"]):
        raise GenerationError(f"default_region {CONTEXT['default_region']!r} is not an AWS region name such as eu-west-1")
    if not ROLE_NAME.match(CONTEXT["deploy_role_name"]):
        raise GenerationError(f"deploy_role_name {CONTEXT['deploy_role_name']!r} is not a valid IAM role name (letters, digits and +=,.@_-)")
    for name in ("owner_tag", "cost_centre"):
        if not CONTEXT[name].strip():
            raise GenerationError(f"{name} is empty; the tagging policy requires it on every resource")


def copy_part(source_root: Path, relative: str, destination_root: Path) -> None:
    source = source_root / relative
    destination = destination_root / relative
    if not source.exists():
        raise GenerationError(f"{relative} is missing from the template checkout {source_root}; is it complete?")
    destination.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, destination, ignore=NOT_COPIED, dirs_exist_ok=True)
    else:
        shutil.copy2(source, destination)


def write_accounts(repo: Path, accounts: list[tuple[str, str, str]]) -> None:
    """Write each account's account.json and a starter deployment (one versioned bucket)."""
    region = CONTEXT["default_region"]
    for name, account_id, environment in accounts:
        folder = repo / "Accounts" / name
        folder.mkdir(parents=True, exist_ok=True)
        account = {
            "name": name,
            "account_id": account_id,
            "environment": environment,
            "regions": [region],
            "default_region": region,
            "deploy_role_arn": f"arn:aws:iam::{account_id}:role/{CONTEXT['deploy_role_name']}",
            "description": f"{environment} account of {CONTEXT['team_name']}.",
        }
        (folder / "account.json").write_text(json.dumps(account, indent=2) + "\n", encoding="utf-8")
        starter = STARTER_DEPLOYMENT.replace("ACCOUNT", name).replace("REGION", region)
        starter = starter.replace("OWNER", CONTEXT["owner_tag"]).replace("COST_CENTRE", CONTEXT["cost_centre"])
        (folder / "baseline.tfvars").write_text(starter, encoding="utf-8")


def write_workflows(template: Path, repo: Path) -> None:
    """Copy the GitHub Actions workflows with the team's role, region and Python version filled in."""
    values = {
        "__AWS_ROLE_ARN__": CONTEXT["ci_role_arn"],
        "__AWS_REGION__": CONTEXT["default_region"],
        "__PYTHON_VERSION__": CONTEXT["python_version"],
    }
    target = repo / ".github" / "workflows"
    target.mkdir(parents=True, exist_ok=True)
    for workflow in sorted((template / "ci" / "github-workflows").glob("*.yml")):
        text = workflow.read_text(encoding="utf-8")
        for placeholder, value in values.items():
            text = text.replace(placeholder, value)
        (target / workflow.name).write_text(text, encoding="utf-8")


def main() -> None:
    template = Path(CONTEXT["_repo_dir"]).resolve()
    repo = Path.cwd()
    check_values()
    accounts = parse_accounts(CONTEXT["accounts"])
    for relative in SHARED_PARTS:
        copy_part(template, relative, repo)
    for relative in EXAMPLE_PARTS:
        source = template / relative
        destination = repo / "tests" / "example-repo" / relative
        if source.is_dir():
            shutil.copytree(source, destination, ignore=NOT_COPIED, dirs_exist_ok=True)
        else:
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination)

    # The team's settings come first; the template's policy lists follow unchanged.
    team_settings = repo / "orchestrator.toml"
    shared_lines = (template / "orchestrator.toml").read_text(encoding="utf-8").splitlines(keepends=True)
    while shared_lines and shared_lines[0].startswith("#"):
        shared_lines.pop(0)  # the template's own header; the team file has one
    shared_settings = "".join(shared_lines).lstrip("\n")
    review = "# The template's policy lists follow, with their reasons; review them for your own resources.\n"
    team_settings.write_text(team_settings.read_text(encoding="utf-8") + "\n" + review + shared_settings, encoding="utf-8")

    write_accounts(repo, accounts)
    write_workflows(template, repo)


if __name__ == "__main__":
    try:
        main()
    except GenerationError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
