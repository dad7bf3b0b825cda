"""The workflow templates under ci/github-workflows, before the template hook fills them in.

Only the template has these files; a generated repository has the filled workflows, which
tests/test_workflows.py checks, so the hook does not copy this module.
"""

from __future__ import annotations

import re

import pytest

from test_workflows import (
    CONFIGURE_AWS_ACTION,
    PLACEHOLDER_PATTERN,
    PLACEHOLDER_VALUES,
    TEMPLATE_WORKFLOWS as WORKFLOWS_DIR,
    WORKFLOW_NAMES,
    fill_placeholders,
    load_workflow,
    schema_errors,
    steps_of,
    workflow_schema,  # noqa: F401 - the module-scoped fixture
)


@pytest.mark.parametrize("name", WORKFLOW_NAMES)
def test_filled_workflow_matches_schema(name, workflow_schema):
    workflow = load_workflow(fill_placeholders((WORKFLOWS_DIR / name).read_text(encoding="utf-8")))

    assert schema_errors(workflow_schema, workflow) == []
    for job_id, step in steps_of(workflow):
        inputs = step.get("with", {})
        if "python-version" in inputs:
            assert inputs["python-version"] == "3.10", f"{name} {job_id}: python-version is {inputs['python-version']!r}"
        if step.get("uses", "").startswith(CONFIGURE_AWS_ACTION):
            assert inputs["role-to-assume"] == PLACEHOLDER_VALUES["__AWS_ROLE_ARN__"]
            assert inputs["aws-region"] == "eu-west-1"


@pytest.mark.parametrize("name", WORKFLOW_NAMES)
def test_placeholders_only_allowed_form(name):
    text = (WORKFLOWS_DIR / name).read_text(encoding="utf-8")

    assert set(PLACEHOLDER_PATTERN.findall(text)) <= set(PLACEHOLDER_VALUES)
    assert "__PYTHON_VERSION__" in text
    assert PLACEHOLDER_PATTERN.findall(fill_placeholders(text)) == []
    # The template hook only replaces the placeholders and renders no Jinja, so double braces
    # may appear only in GitHub expressions.
    assert re.findall(r"(?<!\$)\{\{", text) == []
    assert "{%" not in text
    assert "{#" not in text
