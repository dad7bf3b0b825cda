"""The GitHub Actions matrix: dependency levels of the selected shards and their output formats."""

from __future__ import annotations

import io
import json

import pytest

from orchestrator import matrix
from orchestrator.discovery import discover
from orchestrator.errors import ConfigurationError, SelectionError
from orchestrator.matrix import build_matrix, dependency_levels, matrix_main
from orchestrator.selection import SelectionRequest, select_shards, shard_dependencies
from orchestrator.settings import load_settings

from test_discovery import make_service, write


def selected(repo, **flags):
    settings = load_settings(repo)
    shards = select_shards(discover(settings), settings, SelectionRequest(**flags))
    return shards, shard_dependencies(shards)


def level_ids(levels) -> list[list[str]]:
    return [[shard.id for shard in level] for level in levels]


@pytest.fixture
def deep_repo(template_repo):
    """The template with two more services chained after s3, so prod/payments needs 4 levels."""
    make_service(template_repo, "cdn", ["cdn_distributions"], depends_on=["s3"])
    make_service(template_repo, "dns", ["dns_records"], depends_on=["cdn"])
    payments = template_repo / "Accounts/prod/payments.tfvars"
    write(payments, payments.read_text() + "\ncdn_distributions = {}\ndns_records = {}\n")
    return template_repo


def test_levels_put_prerequisites_first(template_repo):
    shards, dependencies = selected(template_repo, all=True)
    levels = dependency_levels(shards, dependencies)
    level_of = {shard.id: index for index, level in enumerate(levels) for shard in level}

    assert sorted(level_of) == sorted(shard.id for shard in shards)
    assert sum(len(level) for level in levels) == len(shards)
    for shard in shards:
        for prerequisite in dependencies[shard.id]:
            assert level_of[prerequisite] < level_of[shard.id], f"{prerequisite} is not before {shard.id}"


def test_levels_of_template_repo(template_repo):
    levels = level_ids(dependency_levels(*selected(template_repo, all=True)))

    assert len(levels) == 2
    assert levels[1] == ["prod/orders-api/lambda", "prod/payments/s3", "staging/orders-api/lambda", "staging/payments/s3"]
    assert "prod/payments/kms" in levels[0]
    assert "prod/orders-api/iam" in levels[0]
    for level in levels:
        assert level == sorted(level)


def test_levels_use_longest_path(template_repo):
    shards, _ = selected(template_repo, deployments=["prod/payments", "prod/orders-api"])
    by_id = {shard.id: shard for shard in shards}
    # s3 waits for kms and for lambda, which itself waits for iam, so s3 is two levels deep.
    dependencies = {
        "prod/orders-api/iam": set(),
        "prod/orders-api/lambda": {"prod/orders-api/iam"},
        "prod/payments/kms": set(),
        "prod/payments/s3": {"prod/payments/kms", "prod/orders-api/lambda"},
    }

    levels = level_ids(dependency_levels(list(by_id.values()), dependencies))

    assert levels == [["prod/orders-api/iam", "prod/payments/kms"], ["prod/orders-api/lambda"], ["prod/payments/s3"]]


def test_only_dependents_share_level_zero(template_repo):
    shards, dependencies = selected(template_repo, changed_files=["modules/s3/main.tf", "modules/lambda/main.tf"])
    document = build_matrix(shards, dependencies, max_levels=3)

    assert sorted(shard.id for shard in shards) == ["prod/orders-api/lambda", "prod/payments/s3", "shared-services/build-cache/s3", "staging/orders-api/lambda", "staging/payments/s3"]
    assert document["levels"] == 1
    assert [entry["shard"] for entry in document["level0"]["include"]] == sorted(shard.id for shard in shards)
    assert document["has_level0"] is True
    assert document["level1"] == {"include": []}
    assert document["has_level1"] is False
    assert document["level2"] == {"include": []}
    assert document["has_level2"] is False


def test_prerequisites_outside_selection_ignored(template_repo):
    shards, _ = selected(template_repo, deployments=["prod/payments/s3"])

    levels = level_ids(dependency_levels(shards, {"prod/payments/s3": {"prod/payments/kms"}}))

    assert levels == [["prod/payments/s3"]]


def test_matrix_entry_fields(template_repo):
    shards, dependencies = selected(template_repo, deployments=["staging/orders-api/lambda"])

    document = build_matrix(shards, dependencies, max_levels=1)

    assert document["level0"]["include"] == [
        {"shard": "staging/orders-api/lambda", "deployment": "staging/orders-api", "account": "staging", "region": "us-east-1", "service": "lambda"},
    ]


def test_matrix_has_max_levels_keys(template_repo):
    document = build_matrix(*selected(template_repo, all=True), max_levels=5)

    assert document["levels"] == 2
    assert [key for key in document if key.startswith("level") and key != "levels"] == [f"level{k}" for k in range(5)]
    assert [document[f"has_level{k}"] for k in range(5)] == [True, True, False, False, False]
    json.dumps(document)


def test_too_deep_raises_with_chain(deep_repo):
    shards, dependencies = selected(deep_repo, all=True)

    with pytest.raises(ConfigurationError) as raised:
        build_matrix(shards, dependencies, max_levels=3)

    message = str(raised.value)
    assert "need 4 dependency levels" in message
    assert "the matrix has 3 (--max-levels 3)" in message
    assert "prod/payments/kms -> prod/payments/s3 -> prod/payments/cdn -> prod/payments/dns" in message
    assert "Pass --max-levels 4" in message
    assert "level3" in message


def test_deep_graph_fits_more_levels(deep_repo):
    document = build_matrix(*selected(deep_repo, all=True), max_levels=4)

    assert document["levels"] == 4
    assert [entry["shard"] for entry in document["level3"]["include"]] == ["prod/payments/dns"]


def test_cycle_raises(template_repo):
    shards, _ = selected(template_repo, deployments=["prod/payments"])
    cycle = {"prod/payments/kms": {"prod/payments/s3"}, "prod/payments/s3": {"prod/payments/kms"}}

    with pytest.raises(ConfigurationError, match="shard dependency cycle: prod/payments/"):
        dependency_levels(shards, cycle)


def test_level_over_job_limit_raises(template_repo, monkeypatch):
    monkeypatch.setattr(matrix, "MAX_MATRIX_JOBS", 3)
    shards, dependencies = selected(template_repo, all=True)

    with pytest.raises(ConfigurationError, match="dependency level 0 has 6 shards, but GitHub Actions creates at most 3 jobs"):
        build_matrix(shards, dependencies, max_levels=3)


def test_max_levels_below_one_raises(template_repo):
    with pytest.raises(ConfigurationError, match="--max-levels must be at least 1, got 0"):
        build_matrix(*selected(template_repo, all=True), max_levels=0)


def test_main_prints_one_json_line(template_repo):
    stream = io.StringIO()

    code = matrix_main(load_settings(template_repo), SelectionRequest(all=True), 3, None, stream)

    lines = stream.getvalue().splitlines()
    assert code == 0
    assert len(lines) == 1
    assert json.loads(lines[0]) == build_matrix(*selected(template_repo, all=True), max_levels=3)


def test_main_writes_github_output(template_repo, tmp_path):
    output_path = tmp_path / "github_output"
    output_path.write_text("earlier=kept\n")
    stream = io.StringIO()

    code = matrix_main(load_settings(template_repo), SelectionRequest(all=True), 3, output_path, stream)

    lines = output_path.read_text().splitlines()
    outputs = dict(line.split("=", 1) for line in lines)
    assert code == 0
    assert lines[0] == "earlier=kept"
    assert list(outputs) == ["earlier", "levels", "level0", "has_level0", "level1", "has_level1", "level2", "has_level2"]
    assert outputs["levels"] == "2"
    assert outputs["has_level0"] == "true"
    assert outputs["has_level1"] == "true"
    assert outputs["has_level2"] == "false"
    assert outputs["level2"] == '{"include":[]}'
    assert len(json.loads(outputs["level0"])["include"]) == 6
    assert [entry["shard"] for entry in json.loads(outputs["level1"])["include"]] == ["prod/orders-api/lambda", "prod/payments/s3", "staging/orders-api/lambda", "staging/payments/s3"]
    assert stream.getvalue().startswith("10 shard(s) in 2 level(s); level0: ")


def test_main_unaffected_change_gives_empty_levels(template_repo, tmp_path):
    output_path = tmp_path / "github_output"

    matrix_main(load_settings(template_repo), SelectionRequest(changed_files=["README.md"]), 3, output_path, io.StringIO())

    outputs = dict(line.split("=", 1) for line in output_path.read_text().splitlines())
    assert outputs["levels"] == "0"
    assert [outputs[f"has_level{k}"] for k in range(3)] == ["false", "false", "false"]


def test_main_empty_filter_raises(template_repo):
    request = SelectionRequest(accounts=["prod"], regions=["us-east-1"])

    with pytest.raises(SelectionError, match="selects no shard"):
        matrix_main(load_settings(template_repo), request, 3, None, io.StringIO())


def test_main_unwritable_output_raises(template_repo, tmp_path):
    output_path = tmp_path / "missing-folder" / "github_output"

    with pytest.raises(ConfigurationError, match="cannot write the matrix to"):
        matrix_main(load_settings(template_repo), SelectionRequest(all=True), 3, output_path, io.StringIO())
