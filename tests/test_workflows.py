"""The GitHub Actions workflows that generated team repositories receive under .github/workflows/."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
from importlib import resources

import jsonschema
import pytest
from ruamel.yaml import YAML

from orchestrator.matrix import DEFAULT_MAX_LEVELS, build_matrix

from conftest import PROJECT_ROOT

# The template keeps the workflows with placeholders in ci/; a generated repository has them
# filled in under .github/workflows, and these tests check those instead.
TEMPLATE_WORKFLOWS = PROJECT_ROOT / "ci" / "github-workflows"
WORKFLOWS_DIR = TEMPLATE_WORKFLOWS if TEMPLATE_WORKFLOWS.is_dir() else PROJECT_ROOT / ".github" / "workflows"
WORKFLOW_NAMES = ["apply.yml", "drift.yml", "plan.yml"]

# The placeholders that the template hook replaces, with realistic stand-in values. Python
# "3.10" would turn into the number 3.1 if the placeholder were not quoted in the YAML.
PLACEHOLDER_VALUES = {
    "__AWS_ROLE_ARN__": "arn:aws:iam::123456789012:role/github-actions-deploy",
    "__AWS_REGION__": "eu-west-1",
    "__PYTHON_VERSION__": "3.10",
}
PLACEHOLDER_PATTERN = re.compile(r"__[A-Za-z0-9_]+__")
RUN_PREFIXES = ("invoke ", "pip ", "python -m pip ")
CONFIGURE_AWS_ACTION = "aws-actions/configure-aws-credentials@"


def vendored_schema(package: str, name: str) -> dict:
    """Load a schema file that check-jsonschema ships inside its package."""
    return json.loads(resources.files(package).joinpath(name).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def workflow_schema() -> dict:
    # SchemaStore's GitHub workflow schema, as vendored by check-jsonschema.
    return vendored_schema("check_jsonschema.builtin_schemas.vendor", "github-workflows.json")


def load_workflow(text: str) -> dict:
    # YAML 1.2, as GitHub reads workflows: `on` stays a string key, where YAML 1.1 loaders
    # turn it into the boolean true.
    return YAML(typ="safe", pure=True).load(text)


def read_workflow(name: str) -> dict:
    return load_workflow((WORKFLOWS_DIR / name).read_text(encoding="utf-8"))


def fill_placeholders(text: str) -> str:
    for placeholder, value in PLACEHOLDER_VALUES.items():
        text = text.replace(placeholder, value)
    return text


def schema_errors(schema: dict, document: dict) -> list[str]:
    """Return one line per schema error: the path inside the document and the closest cause."""
    validator_class = jsonschema.validators.validator_for(schema)
    validator = validator_class(schema)
    lines = []
    for error in validator.iter_errors(document):
        # A job failing a oneOf would otherwise print the whole job. Its context contains the
        # errors of every branch, and the deepest one points at the wrong key or value.
        cause = error
        while cause.context:
            cause = max(cause.context, key=lambda branch_error: len(branch_error.absolute_path))
        path = "/".join(map(str, cause.absolute_path)) or "(top)"
        lines.append(f"{path}: {cause.message[:300]}")
    return lines


def steps_of(workflow: dict):
    for job_id, job in workflow["jobs"].items():
        for step in job.get("steps", []):
            yield job_id, step


def effective_permissions(workflow: dict, job: dict) -> dict:
    # Job-level permissions replace the workflow-level ones instead of merging with them.
    return job.get("permissions", workflow.get("permissions", {}))


def test_workflow_files_present():
    assert sorted(path.name for path in WORKFLOWS_DIR.iterdir()) == WORKFLOW_NAMES


@pytest.mark.parametrize("name", WORKFLOW_NAMES)
def test_workflow_matches_schema(name, workflow_schema):
    assert schema_errors(workflow_schema, read_workflow(name)) == []


@pytest.mark.parametrize("name", WORKFLOW_NAMES)
def test_every_job_has_timeout(name):
    schema = vendored_schema("check_jsonschema.builtin_schemas.custom", "github-workflows-require-timeout.json")

    assert schema_errors(schema, read_workflow(name)) == []


@pytest.mark.parametrize("name", WORKFLOW_NAMES)
def test_run_steps_call_invoke_or_pip(name):
    runs = [(job_id, step["run"]) for job_id, step in steps_of(read_workflow(name)) if "run" in step]

    assert runs, f"{name} has no run step"
    for job_id, script in runs:
        assert script.startswith(RUN_PREFIXES), f"{name} {job_id}: {script!r}"
        assert "make " not in script


@pytest.mark.parametrize("name", WORKFLOW_NAMES)
def test_aws_jobs_use_oidc(name):
    workflow = read_workflow(name)
    jobs_with_aws = 0

    for job_id, job in workflow["jobs"].items():
        uses = [step.get("uses", "") for step in job.get("steps", [])]
        if not any(action.startswith(CONFIGURE_AWS_ACTION) for action in uses):
            continue
        jobs_with_aws += 1
        permissions = effective_permissions(workflow, job)
        assert permissions.get("id-token") == "write", f"{name} {job_id}"
        assert permissions.get("contents") == "read", f"{name} {job_id}"
        assert "aws-access-key-id" not in json.dumps(job), f"{name} {job_id} uses a static access key"

    assert jobs_with_aws > 0


def test_plan_workflow_comments_on_pull_request():
    workflow = read_workflow("plan.yml")
    job = workflow["jobs"]["plan"]
    plan_steps = [step for step in job["steps"] if step.get("run", "").startswith("invoke plan")]

    assert list(workflow["on"]) == ["pull_request"]
    assert workflow["permissions"] == {"contents": "read", "id-token": "write", "pull-requests": "write"}
    assert "github.event.pull_request.number" in workflow["concurrency"]["group"]
    assert job["steps"][0]["with"]["fetch-depth"] == 0
    assert len(plan_steps) == 1
    assert plan_steps[0]["run"] == 'invoke plan --since "origin/$BASE_REF" --comment'
    assert plan_steps[0]["env"]["BASE_REF"] == "${{ github.base_ref }}"
    assert plan_steps[0]["env"]["GITHUB_TOKEN"] == "${{ secrets.GITHUB_TOKEN }}"


def test_apply_workflow_runs_one_at_a_time():
    workflow = read_workflow("apply.yml")

    assert workflow["on"] == {"push": {"branches": ["main"]}}
    assert workflow["concurrency"]["cancel-in-progress"] is False
    assert workflow["permissions"] == {"contents": "read"}


def test_apply_matrix_job_writes_outputs():
    workflow = read_workflow("apply.yml")
    job = workflow["jobs"]["matrix"]
    matrix_step = next(step for step in job["steps"] if step.get("id") == "matrix")

    assert job["steps"][0]["with"]["fetch-depth"] == 0
    assert matrix_step["run"].startswith("invoke matrix ")
    assert "format('--since {0}', github.event.before)" in matrix_step["run"]
    assert f"--max-levels {DEFAULT_MAX_LEVELS} " in matrix_step["run"]
    assert matrix_step["run"].endswith('--github-output "$GITHUB_OUTPUT"')
    assert sorted(job["outputs"]) == sorted(build_matrix([], {}, DEFAULT_MAX_LEVELS))
    for key, value in job["outputs"].items():
        assert value == f"${{{{ steps.matrix.outputs.{key} }}}}"


def test_apply_level_jobs_chain():
    workflow = read_workflow("apply.yml")
    level_jobs = [job_id for job_id in workflow["jobs"] if job_id.startswith("level")]

    assert level_jobs == [f"level{k}" for k in range(DEFAULT_MAX_LEVELS)]
    for k, job_id in enumerate(level_jobs):
        job = workflow["jobs"][job_id]
        expected_needs = ["matrix"] if k == 0 else ["matrix", f"level{k - 1}"]
        assert job["needs"] == expected_needs, job_id
        assert job["if"] == f"needs.matrix.outputs.has_level{k} == 'true'"
        assert job["strategy"]["matrix"] == f"${{{{ fromJSON(needs.matrix.outputs.level{k}) }}}}"
        assert job["strategy"]["fail-fast"] is False
        assert job["environment"] == "production"


def test_apply_level_jobs_apply_one_shard():
    workflow = read_workflow("apply.yml")

    for k in range(DEFAULT_MAX_LEVELS):
        steps = workflow["jobs"][f"level{k}"]["steps"]
        apply_steps = [step for step in steps if step.get("run", "").startswith("invoke apply")]
        assert len(apply_steps) == 1
        assert apply_steps[0]["run"] == 'invoke apply --deployment "$SHARD"'
        assert apply_steps[0]["env"] == {"SHARD": "${{ matrix.shard }}"}


def test_drift_workflow_triggers():
    workflow = read_workflow("drift.yml")

    assert sorted(workflow["on"]) == ["schedule", "workflow_dispatch"]
    assert len(workflow["on"]["schedule"]) == 1
    assert len(workflow["on"]["schedule"][0]["cron"].split()) == 5
    assert workflow["permissions"] == {"contents": "read", "id-token": "write"}


@pytest.fixture
def fake_invoke(tmp_path):
    """A folder with an ``invoke`` script that exits with $FAKE_EXIT_CODE."""
    folder = tmp_path / "bin"
    folder.mkdir()
    script = folder / "invoke"
    script.write_text('#!/bin/sh\necho "invoke $*"\nexit "$FAKE_EXIT_CODE"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return folder


@pytest.mark.parametrize(("invoke_exit_code", "step_exit_code", "reports_drift"), [(0, 0, False), (1, 1, False), (2, 2, True), (4, 4, False)])
def test_drift_step_exit_codes(fake_invoke, invoke_exit_code, step_exit_code, reports_drift):
    workflow = read_workflow("drift.yml")
    script = next(step["run"] for _, step in steps_of(workflow) if step.get("run", "").startswith("invoke plan"))
    environment = {**os.environ, "PATH": f"{fake_invoke}{os.pathsep}{os.environ['PATH']}", "FAKE_EXIT_CODE": str(invoke_exit_code)}

    # GitHub runs a run step without `shell:` on Linux as `bash -e {0}`.
    completed = subprocess.run(["bash", "-e", "-c", script], capture_output=True, text=True, env=environment, timeout=30)

    assert completed.stdout.startswith("invoke plan --all --detailed-exitcode")
    assert completed.returncode == step_exit_code
    assert ("::error title=Drift::" in completed.stdout) is reports_drift
