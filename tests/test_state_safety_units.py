"""Fast unit tests of the state-safety code: backups, bundles, rollback outcomes, errored state, locks.

No Terraform, no sandbox and no network: S3 is an in-memory fake with botocore's errors, and
the second holder of a workspace lock is a child Python process on this machine.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import os
import stat
import subprocess
import sys
import tarfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from botocore.exceptions import ClientError
from cryptography.fernet import Fernet

from orchestrator.backups import (
    BUNDLE_MANIFEST,
    BUNDLE_VALUES,
    BackupError,
    BackupStore,
    StateSnapshot,
    build_bundle,
    extract_bundle,
    new_backup_id,
    with_serial,
)
from orchestrator.discovery import discover
from orchestrator.errored_state import ENCRYPTED_NAME, MARKER_NAME, ErroredStateBlocks, ErroredStateStore
from orchestrator.rollback import NOT_ROLLED_BACK, PARTLY_ROLLED_BACK, ROLLBACK_FAILED, ROLLED_BACK, RollbackOutcome, planned_changes
from orchestrator.errors import ConfigurationError
from orchestrator.redaction import Redactor
from orchestrator.settings import load_settings
from orchestrator.shard_commands import NotConfirmed, confirm
from orchestrator.shard_pipeline import only_state_save_failed
from orchestrator.terraform import ANSI_ESCAPE, CommandResult, force_unlock_argv, state_push_argv
from orchestrator.workspace import WorkspaceWaitInterrupted, workspace_lock

from conftest import PROJECT_ROOT, copy_template

STATE_FIXTURE = Path(__file__).parent / "data" / "state" / "v4-mixed-resources.tfstate"
IAM_SHARD = "shared-services/ci-roles/iam"
IAM_POLICY_FILES = (
    "Accounts/shared-services/iam/ci-runner-assume-deployers.json",
    "Accounts/shared-services/iam/ci-runner-logs.json",
    "Accounts/shared-services/iam/plan-reader-trust.json",
)
BUCKET = "orchestrator-state-111111111111"
STATE_KEY = "iam/111111111111/eu-west-1/orders-api/terraform.tfstate"


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- StateSnapshot and with_serial --------------------------------------------------------------

def test_parse_empty_output_means_no_state():
    for raw in (b"", b"  \n"):
        snapshot = StateSnapshot.parse(raw, "shard staging/orders-api/iam")

        assert snapshot.exists is False
        assert snapshot.empty is True
        assert snapshot.serial is None
        assert snapshot.lineage is None


def test_parse_state_reads_serial_lineage_addresses():
    snapshot = StateSnapshot.parse(STATE_FIXTURE.read_bytes(), "fixture")

    assert snapshot.exists is True
    assert snapshot.empty is False
    assert snapshot.serial == 7
    assert snapshot.lineage == "0b6d4f3e-5a3c-4c55-9f0e-2f7d1c9a8e41"
    assert snapshot.terraform_version == "1.10.5"
    # Data sources (top level and in module.net) are read, not managed, so they are left out.
    expected = {
        'aws_iam_role.this["api"]',
        'aws_iam_role.this["worker"]',
        "aws_instance.web[0]",
        "aws_instance.web[1]",
        "module.net.aws_s3_bucket.logs",
        "module.net.module.flow.aws_flow_log.this",
    }
    assert set(snapshot.addresses) == expected
    assert len(snapshot.addresses) == len(expected)
    assert snapshot.sha256 == hashlib.sha256(STATE_FIXTURE.read_bytes()).hexdigest()


def test_parse_state_without_resources_is_empty():
    raw = json.dumps({"version": 4, "serial": 3, "lineage": "l-1", "resources": []}).encode()
    snapshot = StateSnapshot.parse(raw, "fixture")

    assert snapshot.exists is True
    assert snapshot.empty is True
    assert snapshot.serial == 3


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"{not json", id="invalid-json"),
        pytest.param(b"\xff\xfe{", id="not-utf8"),
        pytest.param(b'{"version": 4, "serial": 2, "resources": []}', id="no-lineage"),
        pytest.param(b'{"version": 4, "lineage": "l-1"}', id="no-serial"),
        pytest.param(b"[]", id="not-an-object"),
    ],
)
def test_parse_invalid_state_raises(raw):
    with pytest.raises(BackupError) as caught:
        StateSnapshot.parse(raw, "shard staging/orders-api/iam")

    message = str(caught.value)
    assert "shard staging/orders-api/iam" in message
    assert "nothing was applied" in message


def test_with_serial_changes_only_serial():
    raw = STATE_FIXTURE.read_bytes()
    changed = with_serial(raw, 12)

    original_document = json.loads(raw)
    changed_document = json.loads(changed)
    assert changed_document["serial"] == 12
    assert changed_document["lineage"] == original_document["lineage"]
    assert changed_document["resources"] == original_document["resources"]
    assert {k: v for k, v in changed_document.items() if k != "serial"} == {k: v for k, v in original_document.items() if k != "serial"}

    snapshot = StateSnapshot.parse(changed, "changed")
    assert snapshot.serial == 12
    assert snapshot.addresses == StateSnapshot.parse(raw, "original").addresses


# --- configuration bundles ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def template_copy(tmp_path_factory) -> Path:
    # Discovery only reads the copy, so one copy serves every bundle test.
    return copy_template(tmp_path_factory.mktemp("bundle-template") / "repo")


@pytest.fixture(scope="module")
def iam_shard(template_copy):
    return discover(load_settings(template_copy)).shard(IAM_SHARD)


@pytest.fixture
def module_workspace(tmp_path) -> Path:
    """A shard working directory made by hand: two module files, a package and files not to pack."""
    directory = tmp_path / "workspace"
    (directory / "packages").mkdir(parents=True)
    (directory / "main.tf").write_text('resource "aws_iam_role" "this" {}\n')
    (directory / "variables.tf").write_text('variable "iam_roles" {}\n')
    (directory / "stray.tf").write_text("# not listed as a module file\n")
    (directory / "packages" / "x.zip").write_bytes(b"PK\x05\x06" + bytes(18))
    (directory / "packages" / "notes.txt").write_text("not a package\n")
    return directory


def build_iam_bundle(shard, workspace: Path, repo: Path) -> tuple[bytes, dict]:
    return build_bundle(shard, workspace, ["variables.tf", "main.tf"], repo, "abc123")


def bundle_members(bundle: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(bundle), mode="r:gz") as archive:
        return {member.name: archive.extractfile(member).read() for member in archive.getmembers()}


def test_bundle_digests_describe_shard(iam_shard, module_workspace, template_copy):
    _, digests = build_iam_bundle(iam_shard, module_workspace, template_copy)

    assert set(digests) == {"values_sha256", "module_sha256", "git_revision", "shard", "module"}
    assert digests["git_revision"] == "abc123"
    assert digests["shard"] == IAM_SHARD
    assert digests["module"] == "iam"
    values_bytes = json.dumps(iam_shard.values, indent=2, sort_keys=True, ensure_ascii=False).encode()
    assert digests["values_sha256"] == hashlib.sha256(values_bytes).hexdigest()


def test_bundle_module_digest_tracks_module_files(iam_shard, module_workspace, template_copy):
    _, before = build_iam_bundle(iam_shard, module_workspace, template_copy)
    (module_workspace / "main.tf").write_text('resource "aws_iam_role" "renamed" {}\n')
    _, after = build_iam_bundle(iam_shard, module_workspace, template_copy)

    assert after["module_sha256"] != before["module_sha256"]
    assert after["values_sha256"] == before["values_sha256"]


def test_bundle_packs_module_packages_and_references(iam_shard, module_workspace, template_copy):
    bundle, digests = build_iam_bundle(iam_shard, module_workspace, template_copy)
    members = bundle_members(bundle)

    expected = {"main.tf", "variables.tf", "packages/x.zip", BUNDLE_VALUES, BUNDLE_MANIFEST}
    expected |= {f"repo/{relative}" for relative in IAM_POLICY_FILES}
    assert set(members) == expected
    assert "stray.tf" not in members
    assert "packages/notes.txt" not in members
    for relative in IAM_POLICY_FILES:
        assert members[f"repo/{relative}"] == (template_copy / relative).read_bytes()
    assert json.loads(members[BUNDLE_MANIFEST]) == digests
    assert json.loads(members[BUNDLE_VALUES]) == iam_shard.values


def test_bundle_skips_reference_outside_repo(iam_shard, module_workspace, template_copy, tmp_path):
    outside = tmp_path / "outside.json"
    outside.write_text('{"Statement": []}')
    roles = {"escaper": {"description": "points outside", "policy_files": ["../outside.json"]}}
    shard = dataclasses.replace(iam_shard, values={**iam_shard.values, "iam_roles": roles})

    bundle, _ = build_iam_bundle(shard, module_workspace, template_copy)

    names = set(bundle_members(bundle))
    assert not any("outside.json" in name for name in names)
    assert not any(name.startswith("repo/") for name in names)


def test_bundle_archive_ignores_times_and_order(iam_shard, module_workspace, template_copy):
    first, _ = build_bundle(iam_shard, module_workspace, ["variables.tf", "main.tf"], template_copy, "abc123")
    for path in module_workspace.rglob("*"):
        os.utime(path, (1_000_000_000, 1_000_000_000))
    second, _ = build_bundle(iam_shard, module_workspace, ["main.tf", "variables.tf"], template_copy, "abc123")

    # The tar stream inside the gzip layer depends neither on file times nor on the order of the list.
    assert gzip.decompress(first) == gzip.decompress(second)


def test_bundle_bytes_same_an_hour_later(iam_shard, module_workspace, template_copy, monkeypatch):
    first, _ = build_iam_bundle(iam_shard, module_workspace, template_copy)
    later = time.time() + 3600
    monkeypatch.setattr(time, "time", lambda: later)
    second, _ = build_iam_bundle(iam_shard, module_workspace, template_copy)

    assert first == second


def test_extract_bundle_round_trip(iam_shard, module_workspace, template_copy, tmp_path):
    bundle, _ = build_iam_bundle(iam_shard, module_workspace, template_copy)
    target = tmp_path / "restore"

    values = extract_bundle(bundle, target)

    root = target.resolve()
    assert values["repo_root"] == str(root / "repo")
    assert {k: v for k, v in values.items() if k != "repo_root"} == {k: v for k, v in iam_shard.values.items() if k != "repo_root"}
    assert (target / "main.tf").read_bytes() == (module_workspace / "main.tf").read_bytes()
    assert (target / "variables.tf").read_bytes() == (module_workspace / "variables.tf").read_bytes()
    assert (target / "packages" / "x.zip").read_bytes() == (module_workspace / "packages" / "x.zip").read_bytes()
    # The values are returned, not left behind as a second copy of possibly secret values.
    assert not (target / BUNDLE_VALUES).exists()
    for relative in values["iam_roles"]["ci-runner"]["policy_files"]:
        unpacked = Path(values["repo_root"]) / relative
        assert unpacked.read_bytes() == (template_copy / relative).read_bytes()


def make_tar_gz(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for info, content in members:
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content) if content else None)
    return buffer.getvalue()


def regular_member(name: str, content: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), content


def link_member(name: str, kind: bytes, target: str) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, b""


def files_outside(base: Path, target: Path) -> list[Path]:
    inside = target.resolve()
    return [p for p in base.rglob("*") if (p.is_file() or p.is_symlink()) and not p.resolve().is_relative_to(inside)]


@pytest.mark.parametrize("case", ["parent", "nested-parent", "absolute", "symlink", "hardlink"])
def test_extract_bundle_rejects_unsafe_member(case, tmp_path):
    base = tmp_path / "case"
    target = base / "restore"
    linked = base / "linked"
    linked.mkdir(parents=True)
    members = {
        "parent": [regular_member("main.tf"), regular_member("../evil")],
        "nested-parent": [regular_member("modules/../../evil")],
        "absolute": [regular_member(str(base / "absolute-evil"))],
        "symlink": [link_member("link", tarfile.SYMTYPE, str(linked)), regular_member("link/evil")],
        "hardlink": [link_member("hard", tarfile.LNKTYPE, str(base / "hard-target"))],
    }[case]

    with pytest.raises(BackupError, match="damaged"):
        extract_bundle(make_tar_gz(members), target)

    assert files_outside(base, target) == []
    assert list(linked.iterdir()) == []


# --- BackupStore against an in-memory S3 --------------------------------------------------------

def client_error(code: str, operation: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": f"{code} (fake S3)"}}, operation)


class FakePaginator:
    def __init__(self, s3: "FakeS3", page_size: int):
        self.s3 = s3
        self.page_size = page_size

    def paginate(self, Bucket: str, Prefix: str):
        keys = sorted(key for bucket, key in self.s3.objects if bucket == Bucket and key.startswith(Prefix))
        for start in range(0, len(keys), self.page_size):
            yield {"Contents": [{"Key": key} for key in keys[start:start + self.page_size]]}


class FakeS3:
    """In-memory S3 with the calls BackupStore makes. A missing key raises NoSuchKey, as S3 does."""

    def __init__(self, page_size: int = 2):
        self.objects: dict[tuple[str, str], bytes] = {}
        self.put_arguments: dict[tuple[str, str], dict] = {}
        self.copies: list[dict] = []
        self.page_size = page_size
        self.put_error: str | None = None

    def put_object(self, Bucket: str, Key: str, Body: bytes, **arguments):
        if self.put_error:
            raise client_error(self.put_error, "PutObject")
        self.objects[(Bucket, Key)] = bytes(Body)
        self.put_arguments[(Bucket, Key)] = arguments

    def get_object(self, Bucket: str, Key: str):
        if (Bucket, Key) not in self.objects:
            raise client_error("NoSuchKey", "GetObject")
        return {"Body": io.BytesIO(self.objects[(Bucket, Key)])}

    def copy_object(self, Bucket: str, Key: str, CopySource: dict, **arguments):
        source = (CopySource["Bucket"], CopySource["Key"])
        if source not in self.objects:
            raise client_error("NoSuchKey", "CopyObject")
        self.objects[(Bucket, Key)] = self.objects[source]
        self.copies.append({"Key": Key, "CopySource": CopySource, **arguments})

    def get_paginator(self, operation: str) -> FakePaginator:
        assert operation == "list_objects_v2"
        return FakePaginator(self, self.page_size)


def backup_id_at(hour: int, run_id: str) -> str:
    return new_backup_id(run_id, "before-apply", datetime(2025, 3, 14, hour, 0, 0, tzinfo=timezone.utc))


@pytest.fixture
def state_snapshot() -> StateSnapshot:
    return StateSnapshot.parse(STATE_FIXTURE.read_bytes(), "fixture")


def test_create_stores_state_and_metadata(state_snapshot):
    s3 = FakeS3()
    store = BackupStore(s3, BUCKET, STATE_KEY)
    backup_id = backup_id_at(9, "run-1")

    backup = store.create(state_snapshot, backup_id, {"run_id": "run-1", "timestamp": "2025-03-14T09:00:00Z"})

    prefix = f"backups/{STATE_KEY}/{backup_id}/"
    assert s3.objects[(BUCKET, prefix + "terraform.tfstate")] == state_snapshot.raw
    metadata = json.loads(s3.objects[(BUCKET, prefix + "metadata.json")])
    assert metadata == backup.metadata
    assert metadata["run_id"] == "run-1"
    assert metadata["sha256"] == hashlib.sha256(state_snapshot.raw).hexdigest()
    assert metadata["serial"] == 7
    assert metadata["lineage"] == state_snapshot.lineage
    assert metadata["resources"] == list(state_snapshot.addresses)
    assert metadata["empty"] is False
    assert metadata["configuration"] is None
    assert backup.created == "2025-03-14T09:00:00Z"
    for key, arguments in s3.put_arguments.items():
        assert arguments["ServerSideEncryption"] == "AES256", key
        assert "SSEKMSKeyId" not in arguments, key


def test_create_uses_kms_key_when_configured(state_snapshot):
    s3 = FakeS3()
    kms_key = "arn:aws:kms:eu-west-1:111111111111:key/0f3e2d1c-aaaa-bbbb-cccc-123456789012"
    store = BackupStore(s3, BUCKET, STATE_KEY, kms_key_id=kms_key)
    store.record_good(b"bundle bytes", {"run_id": "run-0"})

    store.create(state_snapshot, backup_id_at(9, "run-1"), {})

    # Two objects written by record_good, then the backup's state and metadata.
    assert len(s3.put_arguments) == 4
    for key, arguments in s3.put_arguments.items():
        assert arguments["ServerSideEncryption"] == "aws:kms", key
        assert arguments["SSEKMSKeyId"] == kms_key, key
    assert len(s3.copies) == 1
    assert s3.copies[0]["ServerSideEncryption"] == "aws:kms"
    assert s3.copies[0]["SSEKMSKeyId"] == kms_key


def test_create_copies_last_good_configuration(state_snapshot):
    s3 = FakeS3()
    store = BackupStore(s3, BUCKET, STATE_KEY)
    store.record_good(b"last good bundle", {"run_id": "run-0", "git_revision": "abc123"})
    backup_id = backup_id_at(9, "run-1")

    backup = store.create(state_snapshot, backup_id, {})

    assert backup.metadata["configuration"] == {"run_id": "run-0", "git_revision": "abc123"}
    assert s3.copies[0]["CopySource"] == {"Bucket": BUCKET, "Key": f"configurations/{STATE_KEY}/last-good.tar.gz"}
    assert s3.copies[0]["ServerSideEncryption"] == "AES256"
    assert store.configuration_of(backup) == b"last good bundle"
    assert store.last_good_bundle() == b"last good bundle"


def test_create_without_state_stores_no_state_object():
    s3 = FakeS3()
    store = BackupStore(s3, BUCKET, STATE_KEY)
    backup_id = backup_id_at(9, "run-1")

    backup = store.create(StateSnapshot.parse(b"", "fixture"), backup_id, {})

    prefix = f"backups/{STATE_KEY}/{backup_id}/"
    assert (BUCKET, prefix + "terraform.tfstate") not in s3.objects
    assert (BUCKET, prefix + "metadata.json") in s3.objects
    assert backup.metadata["sha256"] is None
    assert backup.metadata["empty"] is True
    assert store.configuration_of(backup) is None
    assert store.state_of(store.get(backup_id)).exists is False


def test_list_returns_oldest_first(state_snapshot):
    s3 = FakeS3(page_size=2)
    store = BackupStore(s3, BUCKET, STATE_KEY)
    other_store = BackupStore(s3, BUCKET, "iam/111111111111/eu-west-1/orders-api-v2/terraform.tfstate")
    # Created newest first, so the order of creation cannot explain a correct result.
    ids = [backup_id_at(hour, f"run-{hour}") for hour in (15, 9, 12)]
    for backup_id in ids:
        store.create(state_snapshot, backup_id, {})
    other_store.create(state_snapshot, backup_id_at(10, "run-other"), {})

    listed = store.list()

    assert [backup.backup_id for backup in listed] == sorted(ids)
    assert listed[0].backup_id.endswith("-run-9-before-apply")
    assert all(backup.metadata["backup_id"] == backup.backup_id for backup in listed)


def test_get_unknown_backup_names_command():
    store = BackupStore(FakeS3(), BUCKET, STATE_KEY)

    with pytest.raises(BackupError) as caught:
        store.get("20250314T090000000000Z-run-1-before-apply")

    message = str(caught.value)
    assert "20250314T090000000000Z-run-1-before-apply" in message
    assert "invoke backups" in message


def test_state_of_returns_stored_state(state_snapshot):
    s3 = FakeS3()
    store = BackupStore(s3, BUCKET, STATE_KEY)
    backup_id = backup_id_at(9, "run-1")
    store.create(state_snapshot, backup_id, {})

    restored = store.state_of(store.get(backup_id))

    assert restored.raw == state_snapshot.raw
    assert restored.serial == 7


def test_state_of_detects_changed_object(state_snapshot):
    s3 = FakeS3()
    store = BackupStore(s3, BUCKET, STATE_KEY)
    backup_id = backup_id_at(9, "run-1")
    store.create(state_snapshot, backup_id, {})
    state_object = (BUCKET, f"backups/{STATE_KEY}/{backup_id}/terraform.tfstate")
    s3.objects[state_object] = with_serial(state_snapshot.raw, 8)

    with pytest.raises(BackupError, match="sha256"):
        store.state_of(store.get(backup_id))


def test_state_of_detects_missing_object(state_snapshot):
    s3 = FakeS3()
    store = BackupStore(s3, BUCKET, STATE_KEY)
    backup_id = backup_id_at(9, "run-1")
    store.create(state_snapshot, backup_id, {})
    del s3.objects[(BUCKET, f"backups/{STATE_KEY}/{backup_id}/terraform.tfstate")]

    with pytest.raises(BackupError, match="incomplete"):
        store.state_of(store.get(backup_id))


def test_create_put_failure_raises_backup_error(state_snapshot):
    s3 = FakeS3()
    s3.put_error = "AccessDenied"
    store = BackupStore(s3, BUCKET, STATE_KEY)

    with pytest.raises(BackupError) as caught:
        store.create(state_snapshot, backup_id_at(9, "run-1"), {})

    message = str(caught.value)
    assert "nothing was applied" in message
    assert BUCKET in message
    assert isinstance(caught.value.__cause__, ClientError)


def test_create_detects_bad_read_back(state_snapshot, monkeypatch):
    s3 = FakeS3()
    store = BackupStore(s3, BUCKET, STATE_KEY)
    real_put = s3.put_object

    # A store that loses the last byte of every object it is given.
    def truncating_put(**arguments):
        real_put(**{**arguments, "Body": arguments["Body"][:-1]})

    monkeypatch.setattr(s3, "put_object", truncating_put)

    with pytest.raises(BackupError, match="nothing was applied"):
        store.create(state_snapshot, backup_id_at(9, "run-1"), {})


# --- rollback -----------------------------------------------------------------------------------

def test_planned_changes_skips_no_op_and_read():
    plan = {
        "resource_changes": [
            {"address": "aws_iam_role.kept", "change": {"actions": ["no-op"]}},
            {"address": "data.aws_iam_policy_document.trust", "change": {"actions": ["read"]}},
            {"address": "aws_iam_role.added", "change": {"actions": ["create"]}},
            {"address": "aws_iam_role.edited", "change": {"actions": ["update"]}},
            {"address": "aws_iam_role.removed", "change": {"actions": ["delete"]}},
            {"address": "aws_iam_role.replaced", "change": {"actions": ["delete", "create"]}},
            {"address": "aws_iam_role.replaced_first", "change": {"actions": ["create", "delete"]}},
        ]
    }

    assert planned_changes(plan) == [
        {"address": "aws_iam_role.added", "actions": ["create"]},
        {"address": "aws_iam_role.edited", "actions": ["update"]},
        {"address": "aws_iam_role.removed", "actions": ["delete"]},
        {"address": "aws_iam_role.replaced", "actions": ["delete", "create"]},
        {"address": "aws_iam_role.replaced_first", "actions": ["create", "delete"]},
    ]


def test_planned_changes_of_empty_plan():
    assert planned_changes({}) == []
    assert planned_changes({"resource_changes": []}) == []


LEFT_OVER = [
    {"address": 'aws_iam_role.this["probe-new"]', "actions": ["delete"]},
    {"address": "aws_iam_role.this[\"probe-keep\"]", "actions": ["update"]},
]


@pytest.mark.parametrize("status", [PARTLY_ROLLED_BACK, ROLLBACK_FAILED])
def test_describe_lists_not_converged(status):
    outcome = RollbackOutcome(status, target="run r-1", planned=LEFT_OVER * 2, not_converged=LEFT_OVER)

    line = outcome.describe()

    assert line.startswith(status)
    assert "run r-1" in line
    assert 'aws_iam_role.this["probe-new"] (delete)' in line
    assert 'aws_iam_role.this["probe-keep"] (update)' in line


def test_describe_failed_without_addresses_points_to_log():
    line = RollbackOutcome(ROLLBACK_FAILED, target="-").describe()

    assert "see the log" in line


def test_describe_rolled_back_counts_changes():
    outcome = RollbackOutcome(ROLLED_BACK, target="run r-1", planned=LEFT_OVER)

    line = outcome.describe()

    assert line.startswith(ROLLED_BACK)
    assert "run r-1" in line
    assert "2 change(s)" in line


def test_describe_not_rolled_back_gives_reason():
    reason = 'no good configuration was recorded, so these resources stay: aws_iam_role.this["probe-new"]'
    outcome = RollbackOutcome(NOT_ROLLED_BACK, target="-", created_by_failed_apply=['aws_iam_role.this["probe-new"]'], error=reason)

    line = outcome.describe()

    assert line.startswith(NOT_ROLLED_BACK)
    assert reason in line


# --- errored state ------------------------------------------------------------------------------

SECRET_STATE = b'{"version": 4, "serial": 9, "lineage": "l-1", "resources": [], "password": "hunter2-not-in-clear"}\n'


@pytest.fixture
def errored_store(tmp_path) -> ErroredStateStore:
    return ErroredStateStore.for_shard(tmp_path / "work", "staging/orders-api/iam")


@pytest.fixture
def errored_file(tmp_path) -> Path:
    path = tmp_path / "errored.tfstate"
    path.write_bytes(SECRET_STATE)
    return path


def test_keep_encrypts_and_removes_clear_file(errored_store, errored_file):
    encrypted = errored_store.keep(errored_file, "run-42", "failed to upload state")

    assert not errored_file.exists()
    assert encrypted == errored_store.folder / ENCRYPTED_NAME
    stored = encrypted.read_bytes()
    assert SECRET_STATE not in stored
    assert b"hunter2" not in stored
    assert mode_of(encrypted) == 0o600
    assert mode_of(errored_store.folder) == 0o700
    assert mode_of(errored_store.key_file) == 0o600
    assert mode_of(errored_store.key_file.parent) == 0o700
    assert mode_of(errored_store.folder / MARKER_NAME) == 0o600


def test_keep_writes_marker(errored_store, errored_file):
    errored_store.keep(errored_file, "run-42", "failed to upload state")

    marker = errored_store.marker
    assert marker["run_id"] == "run-42"
    assert marker["reason"] == "failed to upload state"
    assert marker["file"] == str(errored_store.folder / ENCRYPTED_NAME)


def test_decrypt_to_returns_exact_bytes(errored_store, errored_file, tmp_path):
    errored_store.keep(errored_file, "run-42", "failed to upload state")
    destination = tmp_path / "export.tfstate"

    written = errored_store.decrypt_to(destination)

    assert written == destination
    assert destination.read_bytes() == SECRET_STATE
    assert mode_of(destination) == 0o600


def test_decrypt_to_existing_file_is_private(errored_store, errored_file, tmp_path):
    errored_store.keep(errored_file, "run-42", "failed to upload state")
    destination = tmp_path / "export.tfstate"
    destination.write_text("old export\n")
    destination.chmod(0o644)

    errored_store.decrypt_to(destination)

    assert destination.read_bytes() == SECRET_STATE
    assert mode_of(destination) == 0o600


def test_decrypt_with_wrong_key_raises(errored_store, errored_file, tmp_path):
    errored_store.keep(errored_file, "run-42", "failed to upload state")
    errored_store.key_file.write_text(Fernet.generate_key().decode())
    destination = tmp_path / "export.tfstate"

    with pytest.raises(ErroredStateBlocks) as caught:
        errored_store.decrypt_to(destination)

    message = str(caught.value)
    assert str(errored_store.key_file) in message
    assert str(errored_store.folder) in message
    assert "cannot be decrypted" in message
    assert "restore that key file" in message
    assert not destination.exists()


def test_decrypt_with_damaged_key_raises(errored_store, errored_file, tmp_path):
    errored_store.keep(errored_file, "run-42", "failed to upload state")
    errored_store.key_file.write_text("not-a-fernet-key\n")

    with pytest.raises(ErroredStateBlocks):
        errored_store.decrypt_to(tmp_path / "export.tfstate")


def test_clear_removes_marker_and_file(errored_store, errored_file):
    errored_store.keep(errored_file, "run-42", "failed to upload state")

    errored_store.clear()

    assert errored_store.marker is None
    assert not (errored_store.folder / ENCRYPTED_NAME).exists()
    assert not (errored_store.folder / MARKER_NAME).exists()
    errored_store.clear()  # a second clear must not raise


# --- workspace lock -----------------------------------------------------------------------------

# Holds the lock of the folder in argv[1] until a line arrives on standard input.
HOLDER_SCRIPT = """
import sys, threading
from pathlib import Path
from orchestrator.workspace import workspace_lock

with workspace_lock(Path(sys.argv[1]), on_wait=lambda: None, cancelled=threading.Event()):
    print("held", flush=True)
    sys.stdin.readline()
"""


@pytest.fixture
def lock_holder(tmp_path):
    """Start a child process that holds the workspace lock of a folder, and yield the folder and the process."""
    directory = tmp_path / "shard"
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER_SCRIPT, str(directory)],
        cwd=PROJECT_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert process.stdout.readline().strip() == "held"
        yield directory, process
    finally:
        if process.poll() is None:
            process.stdin.close()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


class LockAttempt:
    """One workspace_lock call in a thread of this process, with what happened to it."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.waiting = threading.Event()
        self.acquired = threading.Event()
        self.cancelled = threading.Event()
        self.wait_calls = 0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _on_wait(self) -> None:
        self.wait_calls += 1
        self.waiting.set()

    def _run(self) -> None:
        try:
            with workspace_lock(self.directory, on_wait=self._on_wait, cancelled=self.cancelled):
                self.acquired.set()
        except BaseException as error:  # stored for the test thread, which asserts on it
            self.error = error


def test_lock_free_needs_no_wait(tmp_path):
    attempt = LockAttempt(tmp_path / "shard")
    attempt.thread.join(timeout=5)

    assert attempt.acquired.is_set()
    assert attempt.wait_calls == 0
    assert attempt.error is None


def test_lock_waits_for_other_process(lock_holder):
    directory, holder = lock_holder
    attempt = LockAttempt(directory)

    assert attempt.waiting.wait(timeout=2)
    assert not attempt.acquired.is_set()

    holder.stdin.write("release\n")
    holder.stdin.flush()

    assert attempt.acquired.wait(timeout=3)
    attempt.thread.join(timeout=2)
    assert attempt.error is None
    assert attempt.wait_calls == 1


def test_lock_wait_interrupted_promptly(lock_holder):
    directory, _ = lock_holder
    attempt = LockAttempt(directory)
    assert attempt.waiting.wait(timeout=2)

    started = time.monotonic()
    attempt.cancelled.set()
    attempt.thread.join(timeout=5)
    elapsed = time.monotonic() - started

    assert isinstance(attempt.error, WorkspaceWaitInterrupted)
    assert str(directory) in str(attempt.error)
    assert elapsed < 2
    assert not attempt.acquired.is_set()


# --- errors that only concern saving state -------------------------------------------------------

SAVE_FAILED_BOXED = """\
aws_iam_role.this["api"]: Modifications complete after 1s [id=orders-api]
╷
│ Error: Failed to save state
│ 
│ Error saving state: failed to upload state: operation error S3: PutObject, https response error StatusCode: 403, api error AccessDenied: Access Denied
╵
╷
│ Error: Failed to persist state to backend
│ 
│ The error shown above has prevented Terraform from writing the updated state to the configured backend.
│ To allow for recovery, the state has been written to the file "errored.tfstate" in the current working directory.
╵
"""

RESOURCE_FAILED_BOXED = """\
╷
│ Error: attaching IAM Policy (arn:aws:iam::aws:policy/PolicyThatDoesNotExist) to IAM Role (probe-new): operation error IAM: AttachRolePolicy, https response error StatusCode: 404, NoSuchEntity
│ 
│   with aws_iam_role_policy_attachment.managed["probe-new"],
╵
"""


@pytest.mark.parametrize(
    "output, expected",
    [
        pytest.param(SAVE_FAILED_BOXED, True, id="boxed-save-and-persist"),
        pytest.param("Error: Failed to save state\n\nError saving state: timeout\n", True, id="plain-save"),
        pytest.param("Warning: deprecated argument\n\nError: Failed to persist state to backend\n", True, id="plain-persist-with-warning"),
        pytest.param(SAVE_FAILED_BOXED + RESOURCE_FAILED_BOXED, False, id="boxed-save-and-resource"),
        pytest.param(RESOURCE_FAILED_BOXED, False, id="boxed-resource-only"),
        pytest.param("Error: Failed to save state\nError: creating S3 Bucket (orders-logs): BucketAlreadyExists\n", False, id="plain-save-and-resource"),
        pytest.param("│ Error: Error acquiring the state lock\n", False, id="lock-error"),
        pytest.param("│ Error: Failed to load state: AccessDenied\n", False, id="load-error"),
        pytest.param("Apply complete! Resources: 1 added, 0 changed, 0 destroyed.\n", False, id="no-error"),
        pytest.param("", False, id="empty-output"),
    ],
)
def test_only_state_save_failed(output, expected):
    assert only_state_save_failed(output) is expected


# --- confirmation -------------------------------------------------------------------------------

class FakeTerminal:
    """Standard input of a terminal where the person types ``line``."""

    def __init__(self, line: str):
        self.line = line

    def isatty(self) -> bool:
        return True

    def readline(self) -> str:
        return self.line


def test_confirm_assume_yes_asks_nothing(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    stream = io.StringIO()

    confirm("Restore backup b-1?", assume_yes=True, stream=stream)

    assert stream.getvalue() == ""


def test_confirm_without_terminal_names_yes(monkeypatch):
    # A "y" already waiting in a pipe is rejected, because no person typed it.
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n"))

    with pytest.raises(NotConfirmed) as caught:
        confirm("Restore backup b-1?", assume_yes=False, stream=io.StringIO())

    message = str(caught.value)
    assert "--yes" in message
    assert "Restore backup b-1?" in message


@pytest.mark.parametrize("line", ["y\n", "yes\n", "Y\n", " YES \n"])
def test_confirm_terminal_yes_passes(monkeypatch, line):
    monkeypatch.setattr(sys, "stdin", FakeTerminal(line))
    stream = io.StringIO()

    confirm("Restore backup b-1?", assume_yes=False, stream=stream)

    assert stream.getvalue() == "Restore backup b-1? [y/N] "


@pytest.mark.parametrize("line", ["n\n", "\n", "no\n", "yep\n", ""])
def test_confirm_terminal_no_cancels(monkeypatch, line):
    monkeypatch.setattr(sys, "stdin", FakeTerminal(line))

    with pytest.raises(NotConfirmed, match="cancelled"):
        confirm("Restore backup b-1?", assume_yes=False, stream=io.StringIO())


# --- Terraform command helpers ------------------------------------------------------------------

@pytest.mark.parametrize(
    "argv, command",
    [
        (["/usr/local/bin/terraform", "state", "pull"], "terraform state pull"),
        (["terraform", "state", "push", "-lock-timeout=5m", "errored.tfstate"], "terraform state push"),
        (["terraform", "plan", "-input=false", "-no-color", "-detailed-exitcode", "-out=plan.tfplan"], "terraform plan"),
        (["/opt/tofu/bin/tofu", "apply", "-input=false", "plan.tfplan"], "tofu apply"),
        (["terraform", "force-unlock", "-force", "lock-1"], "terraform force-unlock"),
    ],
)
def test_command_result_command(argv, command):
    result = CommandResult(argv=argv, cwd="/work", exit_code=0, output="", duration=0.1)

    assert result.command == command


def test_state_push_argv_never_forces():
    argv = state_push_argv("terraform", "errored.tfstate", "5m")

    assert argv == ["terraform", "state", "push", "-lock-timeout=5m", "errored.tfstate"]
    assert not any(argument.startswith("-force") for argument in argv)


def test_force_unlock_argv():
    assert force_unlock_argv("terraform", "9d1f6f0e-lock") == ["terraform", "force-unlock", "-force", "9d1f6f0e-lock"]


@pytest.mark.parametrize(
    "coloured, plain",
    [
        ("\x1b[31mError:\x1b[0m Failed to save state", "Error: Failed to save state"),
        ("\x1b[1m\x1b[32mApply complete!\x1b[0m\x1b[0m", "Apply complete!"),
        ("\x1b[0;33mWarning\x1b[0m: deprecated", "Warning: deprecated"),
        ("no colour here", "no colour here"),
    ],
)
def test_ansi_escape_strips_colour(coloured, plain):
    assert ANSI_ESCAPE.sub("", coloured) == plain


# --- extra redaction patterns from the settings ------------------------------------------------------

def test_extra_redaction_pattern_masks(tmp_path):
    (tmp_path / "orchestrator.toml").write_text('[redaction]\nextra_patterns = ["corp-[0-9]{6}"]\n')
    settings = load_settings(tmp_path)
    redactor = Redactor(extra_patterns=settings.redaction.extra_patterns)
    assert redactor.line("ticket corp-123456 opened") == "ticket (redacted) opened"


def test_invalid_redaction_pattern_rejected(tmp_path):
    (tmp_path / "orchestrator.toml").write_text('[redaction]\nextra_patterns = ["corp-[0-9"]\n')
    with pytest.raises(ConfigurationError) as raised:
        load_settings(tmp_path)
    assert "redaction.extra_patterns" in str(raised.value)
    assert "corp-[0-9" in str(raised.value)


def test_parse_empty_backend_placeholder():
    # What an empty backend gives: a state with an empty lineage and no resources.
    snapshot = StateSnapshot.parse(b'{"version": 4, "serial": 0, "lineage": "", "resources": []}', "pull")
    assert snapshot.exists is False
    assert snapshot.empty is True
