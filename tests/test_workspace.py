"""Shard working directories: module sync, generated files, packages and digests."""

from __future__ import annotations

import json
import stat
import zipfile

import pytest

from orchestrator.discovery import discover
from orchestrator.settings import load_settings
from orchestrator.workspace import PackagingError, build_package, prepare_workspace, shard_directory


@pytest.fixture
def settings(template_repo):
    return load_settings(template_repo)


def shard_of(settings, shard_id):
    return discover(settings).shard(shard_id)


def test_workspace_has_module_and_generated_files(settings):
    workspace = prepare_workspace(shard_of(settings, "prod/payments/s3"), settings, "http://127.0.0.1:5480", "cli-config")
    names = {p.name for p in workspace.directory.iterdir()}

    assert {"main.tf", "variables.tf", "orchestrator_backend.tf.json", "orchestrator_provider.tf.json", "orchestrator.tfvars.json"} <= names
    assert "service.json" not in names
    assert "schema.json" not in names
    values = json.loads(workspace.var_file.read_text())
    assert values["account_id"] == "333333333333"
    assert "kms_keys" not in values
    assert stat.S_IMODE(workspace.var_file.stat().st_mode) == 0o600


def test_digests_are_stable_and_track_inputs(settings, template_repo):
    shard = shard_of(settings, "prod/payments/s3")
    first = prepare_workspace(shard, settings, None, "cli-config")
    again = prepare_workspace(shard, settings, None, "cli-config")
    assert (first.init_digest, first.inputs_digest) == (again.init_digest, again.inputs_digest)

    other_cli = prepare_workspace(shard, settings, None, "other-cli-config")
    assert other_cli.init_digest != first.init_digest

    deployment = template_repo / "Accounts/prod/payments.tfvars"
    deployment.write_text(deployment.read_text().replace('Owner              = "payments-team"', 'Owner              = "ledger-team"'))
    edited = prepare_workspace(shard_of(load_settings(template_repo), "prod/payments/s3"), settings, None, "cli-config")
    assert edited.inputs_digest != first.inputs_digest
    assert edited.init_digest == first.init_digest  # values never require init


def test_removed_module_file_is_removed_from_workspace(settings, template_repo):
    shard = shard_of(settings, "prod/payments/s3")
    extra = template_repo / "modules/s3/extra.tf"
    extra.write_text("# temporary\n")
    workspace = prepare_workspace(shard, settings, None, "c")
    assert (workspace.directory / "extra.tf").exists()

    extra.unlink()
    prepare_workspace(shard, settings, None, "c")
    assert not (workspace.directory / "extra.tf").exists()


def test_lambda_package_built_deterministically(settings):
    shard = shard_of(settings, "prod/orders-api/lambda")
    workspace = prepare_workspace(shard, settings, None, "c")
    package = workspace.directory / "packages" / "api.zip"
    first_bytes = package.read_bytes()

    with zipfile.ZipFile(package) as archive:
        assert "handler.py" in archive.namelist()
        assert all(info.date_time == (1980, 1, 1, 0, 0, 0) for info in archive.infolist())
    assert prepare_workspace(shard, settings, None, "c").inputs_digest == workspace.inputs_digest
    assert package.read_bytes() == first_bytes


def test_lambda_source_change_changes_inputs(settings, template_repo):
    shard = shard_of(settings, "prod/orders-api/lambda")
    before = prepare_workspace(shard, settings, None, "c").inputs_digest
    handler = template_repo / "functions/orders-api/handler.py"
    handler.write_text(handler.read_text() + "\n# changed\n")
    assert prepare_workspace(shard, settings, None, "c").inputs_digest != before


def test_missing_source_folder_is_clear(settings, template_repo):
    deployment = template_repo / "Accounts/prod/orders-api.tfvars"
    deployment.write_text(deployment.read_text().replace("functions/orders-api", "functions/missing"))
    shard = shard_of(load_settings(template_repo), "prod/orders-api/lambda")
    with pytest.raises(PackagingError, match="lambda_functions.api.source_dir = 'functions/missing' is not a folder"):
        prepare_workspace(shard, settings, None, "c")


def test_source_outside_repo_is_rejected(settings, template_repo):
    deployment = template_repo / "Accounts/prod/orders-api.tfvars"
    deployment.write_text(deployment.read_text().replace('"functions/orders-api"', '"../../etc"'))
    shard = shard_of(load_settings(template_repo), "prod/orders-api/lambda")
    with pytest.raises(PackagingError, match="outside the repository"):
        prepare_workspace(shard, settings, None, "c")


def test_package_zip_ignores_bytecode(tmp_path):
    source = tmp_path / "src"
    (source / "__pycache__").mkdir(parents=True)
    (source / "handler.py").write_text("def handler(event, context):\n    return 1\n")
    (source / "__pycache__" / "handler.cpython-311.pyc").write_bytes(b"\0")
    build_package(source, tmp_path / "out.zip")
    with zipfile.ZipFile(tmp_path / "out.zip") as archive:
        assert archive.namelist() == ["handler.py"]


def test_shard_directory_layout(settings):
    shard = shard_of(settings, "prod/payments/s3")
    assert shard_directory(settings, shard) == settings.work_dir / "shards" / "prod" / "payments" / "s3"
