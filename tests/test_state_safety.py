"""State safety on the sandbox with real Terraform: backups, rollback, restore, locks, audit.

The probe deployment owns two IAM roles in the staging account. Its second version changes
one role and adds another whose managed policy does not exist, so the provider creates the
role and then fails on the attachment: an apply that fails halfway. What the account contains
afterwards is read with boto3, never taken from the orchestrator's own report.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from contextlib import redirect_stderr, redirect_stdout
from datetime import date
from pathlib import Path

import pytest

from orchestrator import sandbox
from orchestrator.audit import query
from orchestrator.cli import main as cli_main
from orchestrator.credentials import AwsTarget, assume_role, aws_client, base_credentials
from orchestrator.discovery import discover
from orchestrator.settings import load_settings

from conftest import copy_template, free_port, write_settings

pytestmark = pytest.mark.terraform

PROBE = "staging/rollback-probe"
PROBE_SHARD = f"{PROBE}/iam"
POLICY_FILE = "Accounts/staging/iam/orders-api.json"
# The tagging policy requires these tags on every resource.
TAGS = 'tags = {\n  Owner      = "platform-team"\n  CostCentre = "CC-1001"\n}\n'


def probe_file(keep_description: str, with_broken_role: bool) -> str:
    broken = """
  probe-new = {
    description      = "Added by the apply that fails."
    trusted_services = ["lambda.amazonaws.com"]
    managed_policies = ["arn:aws:iam::aws:policy/PolicyThatDoesNotExist"]
  }
""" if with_broken_role else ""
    return f"""project = "rollback-probe"
region  = "eu-west-1"
{TAGS}
iam_roles = {{
  probe-keep = {{
    description      = "{keep_description}"
    trusted_services = ["lambda.amazonaws.com"]
    policy_files     = ["{POLICY_FILE}"]
  }}
{broken}}}
"""


def run_cli(repo: Path, *argv: str) -> tuple[int, str]:
    output = io.StringIO()
    with redirect_stdout(output), redirect_stderr(output):
        code = cli_main(["--repo", str(repo), *argv])
    return code, output.getvalue()


def latest_report(repo: Path) -> dict:
    return json.loads((repo / ".orchestrator" / "runs" / "latest" / "report.json").read_text())


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = copy_template(tmp_path_factory.mktemp("state-safety") / "repo")
    # Checkov is covered elsewhere; here it would only add seconds to every apply.
    settings_file = root / "orchestrator.toml"
    settings_file.write_text(settings_file.read_text().replace("[policy]\n", "[policy]\ncheckov = false\n", 1))
    write_settings(root, f'[sandbox]\nport = {free_port()}\n\n[terraform]\nlock_timeout = "4s"')
    (root / "Accounts" / "staging" / "rollback-probe.tfvars").write_text(probe_file("version one", with_broken_role=False))
    settings = load_settings(root)
    sandbox.up(settings)
    yield root
    sandbox.down(settings)


def clients(repo: Path, service: str, account: str, region: str = "eu-west-1"):
    settings = load_settings(repo)
    target = AwsTarget(endpoint=settings.sandbox.endpoint)
    base = base_credentials(target)
    inventory = discover(settings)
    if account == "state":
        credentials = assume_role(base, settings.state.role_arn, "tests", region, target)
    else:
        credentials = assume_role(base, inventory.accounts[account].deploy_role_arn, "tests", region, target)
    return aws_client(service, credentials, region, target)


def probe_roles(repo: Path) -> dict[str, str]:
    iam = clients(repo, "iam", "staging")
    return {role["RoleName"]: role.get("Description", "") for role in iam.list_roles()["Roles"] if role["RoleName"].startswith("probe-")}


def state_document(repo: Path, state_key: str) -> dict:
    s3 = clients(repo, "s3", "state")
    return json.loads(s3.get_object(Bucket="tdo-tfstate-eu-west-1", Key=state_key)["Body"].read())


def managed_addresses(document: dict) -> set[str]:
    addresses = set()
    for resource in document["resources"]:
        if resource["mode"] == "managed":
            for instance in resource["instances"]:
                addresses.add(f'{resource["type"]}.{resource["name"]}[{json.dumps(instance["index_key"])}]')
    return addresses


def backups_of(repo: Path, shard: str) -> list[dict]:
    code, output = run_cli(repo, "backups", "--shard", shard, "--sandbox", "--json")
    assert code == 0, output
    return json.loads(output[output.index("["):])


@pytest.fixture(scope="module")
def failed_apply(repo):
    code, output = run_cli(repo, "apply", "--deployment", PROBE, "--sandbox")
    assert code == 0, output
    first_state = state_document(repo, latest_report(repo)["shards"][0]["state_key"])

    (repo / "Accounts" / "staging" / "rollback-probe.tfvars").write_text(probe_file("version two", with_broken_role=True))
    code, output = run_cli(repo, "apply", "--deployment", PROBE, "--sandbox")
    return {"code": code, "output": output, "report": latest_report(repo), "first_state": first_state}


def test_first_apply_backs_up_empty_state(failed_apply, repo):
    backups = backups_of(repo, PROBE_SHARD)
    first = backups[0]
    assert first["reason"] == "pre-apply"
    assert first["empty"] is True
    assert first["configuration"] is None


def test_backup_contents(failed_apply, repo):
    backups = backups_of(repo, PROBE_SHARD)
    before_failure = [b for b in backups if b["reason"] == "pre-apply"][-1]
    first_state = failed_apply["first_state"]
    assert before_failure["serial"] == first_state["serial"]
    assert before_failure["lineage"] == first_state["lineage"]
    assert set(before_failure["resources"]) == managed_addresses(first_state)
    configuration = before_failure["configuration"]
    assert configuration["values_sha256"]
    assert configuration["module_sha256"]
    assert configuration["git_revision"]

    s3 = clients(repo, "s3", "state")
    prefix = f"backups/{before_failure['state_key']}/{before_failure['backup_id']}/"
    state_object = s3.get_object(Bucket="tdo-tfstate-eu-west-1", Key=prefix + "terraform.tfstate")
    assert state_object["ServerSideEncryption"] == "AES256"
    body = state_object["Body"].read()
    assert hashlib.sha256(body).hexdigest() == before_failure["sha256"]
    assert json.loads(body)["lineage"] == first_state["lineage"]

    bundle = s3.get_object(Bucket="tdo-tfstate-eu-west-1", Key=prefix + "configuration.tar.gz")["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(bundle)) as archive:
        names = set(archive.getnames())
        values = json.loads(archive.extractfile("values.json").read())
    assert {"main.tf", "variables.tf", f"repo/{POLICY_FILE}"} <= names
    assert values["iam_roles"]["probe-keep"]["description"] == "version one"

    # The failed configuration produced the state a failed apply left, and its backup records that.
    after_failure = [b for b in backups if b["reason"] == "after-failed-apply"][-1]
    assert after_failure["configuration"]["failed_apply"] is True
    assert after_failure["configuration"]["values_sha256"] != configuration["values_sha256"]


def test_halfway_failure_rolls_back(failed_apply, repo):
    assert failed_apply["code"] == 1, failed_apply["output"]
    shard = failed_apply["report"]["shards"][0]
    assert shard["status"] == "failed"
    assert shard["rollback"]["status"] == "rolled back", shard["rollback"]
    assert 'aws_iam_role.this["probe-new"]' in shard["rollback"]["created_by_failed_apply"]
    assert "failed, rolled back" in failed_apply["output"]

    # The account contains what the last good configuration describes, and nothing more.
    assert probe_roles(repo) == {"probe-keep": "version one"}
    iam = clients(repo, "iam", "staging")
    assert iam.list_attached_role_policies(RoleName="probe-keep")["AttachedPolicies"] == []
    assert [p for p in iam.list_role_policies(RoleName="probe-keep")["PolicyNames"]] == ["orders-api"]

    # The state lists exactly those resources again.
    state = state_document(repo, shard["state_key"])
    assert managed_addresses(state) == managed_addresses(failed_apply["first_state"])
    assert state["lineage"] == failed_apply["first_state"]["lineage"]


def test_rollback_is_audited(failed_apply, repo):
    settings = load_settings(repo)
    s3 = clients(repo, "s3", "state", settings.audit.region)
    today = date.today()
    rollbacks = query(settings, s3, today, today, account="staging", action="rollback")
    assert [r.result for r in rollbacks] == ["rolled back"]
    code, output = run_cli(repo, "audit", "--sandbox", "--account", "staging", "--action", "rollback")
    assert code == 0, output
    assert "rolled back" in output
    assert PROBE_SHARD in output
    applies = query(settings, s3, today, today, account="222222222222", action="apply", result="failed")
    assert applies
    assert "PolicyThatDoesNotExist" in applies[-1].output


def test_restore_state_round_trip(failed_apply, repo):
    backups = backups_of(repo, PROBE_SHARD)
    after_failure = [b for b in backups if b["reason"] == "after-failed-apply"][-1]
    before_failure = [b for b in backups if b["reason"] == "pre-apply"][-1]
    state_key = after_failure["state_key"]
    serial_now = state_document(repo, state_key)["serial"]

    # A state that still lists the role the rollback destroyed: the refresh-only plan shows it gone.
    code, output = run_cli(repo, "restore-state", "--shard", PROBE_SHARD, "--backup", after_failure["backup_id"], "--sandbox", "--yes")
    assert code == 0, output
    restored = state_document(repo, state_key)
    # Terraform accepts only a higher serial of the same lineage, so the push can never go backwards.
    assert restored["serial"] > serial_now
    assert restored["lineage"] == after_failure["lineage"]
    assert 'aws_iam_role.this["probe-new"]' in managed_addresses(restored)
    assert 'aws_iam_role.this["probe-new"]: delete' in output

    code, output = run_cli(repo, "restore-state", "--shard", PROBE_SHARD, "--backup", before_failure["backup_id"], "--sandbox", "--yes")
    assert code == 0, output
    assert managed_addresses(state_document(repo, state_key)) == set(before_failure["resources"])
    # Every resource of this state exists; at most the provider refreshes attributes it did not record at creation.
    drift = output.split("refresh-only plan")[-1]
    assert ": delete" not in drift, output
    assert "probe-new" not in drift, output
    assert any(b["reason"] == "pre-restore" for b in backups_of(repo, PROBE_SHARD))


def test_restore_refuses_another_lineage(failed_apply, repo):
    backups = backups_of(repo, PROBE_SHARD)
    source = [b for b in backups if b["reason"] == "pre-apply" and not b["empty"]][-1]
    s3 = clients(repo, "s3", "state")
    bucket = "tdo-tfstate-eu-west-1"
    prefix = f"backups/{source['state_key']}/"
    foreign_id = source["backup_id"] + "-foreign"
    document = json.loads(s3.get_object(Bucket=bucket, Key=prefix + source["backup_id"] + "/terraform.tfstate")["Body"].read())
    document["lineage"] = "00000000-0000-0000-0000-000000000000"
    body = json.dumps(document).encode()
    metadata = {**source, "backup_id": foreign_id, "lineage": document["lineage"], "sha256": hashlib.sha256(body).hexdigest()}
    s3.put_object(Bucket=bucket, Key=prefix + foreign_id + "/terraform.tfstate", Body=body)
    s3.put_object(Bucket=bucket, Key=prefix + foreign_id + "/metadata.json", Body=json.dumps(metadata).encode())
    serial_before = state_document(repo, source["state_key"])["serial"]

    code, output = run_cli(repo, "restore-state", "--shard", PROBE_SHARD, "--backup", foreign_id, "--sandbox", "--yes")
    assert code == 4, output
    assert "another state history" in output, output
    assert state_document(repo, source["state_key"])["serial"] == serial_before


def test_rollback_command_converges_to_a_chosen_backup(failed_apply, repo):
    # The first backup was taken before the shard's first apply: converging to it removes everything.
    first = backups_of(repo, PROBE_SHARD)[0]
    code, output = run_cli(repo, "rollback", "--shard", PROBE_SHARD, "--backup", first["backup_id"], "--sandbox")
    assert code == 4, output
    assert "--yes" in output, output
    assert probe_roles(repo) == {"probe-keep": "version one"}

    code, output = run_cli(repo, "rollback", "--shard", PROBE_SHARD, "--backup", first["backup_id"], "--sandbox", "--yes")
    assert code == 0, output
    assert probe_roles(repo) == {}
    assert managed_addresses(state_document(repo, first["state_key"])) == set()



# A rollback whose own apply fails: the wrapper refuses every apply in a rollback folder.
ROLLBACK_FAILING_TERRAFORM = """#!/bin/sh
case "$(pwd)" in
  */.orchestrator/rollback/*)
    if [ "$1" = apply ]; then
      echo "Error: simulated failure of the rollback's apply"
      exit 1
    fi;;
esac
exec "{real}" "$@"
"""


def test_failed_rollback_lists_resources(repo, tmp_path):
    deployment = repo / "Accounts" / "staging" / "rollback-fails.tfvars"
    deployment.write_text(probe_file("kept as one", with_broken_role=False).replace("rollback-probe", "rollback-fails").replace("probe-keep", "fails-keep"))
    code, output = run_cli(repo, "apply", "--deployment", "staging/rollback-fails", "--sandbox")
    assert code == 0, output

    wrapper = tmp_path / "terraform"
    wrapper.write_text(ROLLBACK_FAILING_TERRAFORM.format(real=shutil.which("terraform")))
    wrapper.chmod(0o755)
    settings_file = repo / "orchestrator.toml"
    original_settings = settings_file.read_text()
    settings_file.write_text(original_settings.replace("[terraform]\n", f'[terraform]\nbinary = "{wrapper}"\n', 1))
    deployment.write_text(probe_file("changed to two", with_broken_role=True).replace("rollback-probe", "rollback-fails").replace("probe-keep", "fails-keep").replace("probe-new", "fails-new"))
    try:
        code, output = run_cli(repo, "apply", "--deployment", "staging/rollback-fails", "--sandbox")
    finally:
        settings_file.write_text(original_settings)
    assert code == 1, output
    rollback = latest_report(repo)["shards"][0]["rollback"]
    assert rollback["status"] == "rollback failed", rollback
    not_converged = {item["address"]: item["actions"] for item in rollback["not_converged"]}
    assert not_converged == {'aws_iam_role.this["fails-keep"]': ["update"], 'aws_iam_role.this["fails-new"]': ["delete"]}, rollback
    assert "failed, rollback failed" in output
    assert 'aws_iam_role.this["fails-new"] (delete)' in output


# --- locks ---------------------------------------------------------------------------------------

KILL_PROBE = "staging/kill-probe"


def kill_probe_file(buckets: dict[str, int | None]) -> str:
    entries = "\n".join(
        f'  {name} = {{\n    versioning    = false\n    force_destroy = true\n' + (f"    lifecycle_days = {days}\n" if days else "") + "  }"
        for name, days in buckets.items()
    )
    return f'project = "kill-probe"\nregion  = "eu-west-1"\n{TAGS}\ns3_buckets = {{\n{entries}\n}}\n'


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Terraform runs in sessions of its own, so killpg misses it)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def test_sigkill_mid_apply_then_unlock(repo):
    deployment_file = repo / "Accounts" / "staging" / "kill-probe.tfvars"
    deployment_file.write_text(kill_probe_file({"first": None}))
    code, output = run_cli(repo, "apply", "--deployment", KILL_PROBE, "--sandbox")
    assert code == 0, output
    state_key = latest_report(repo)["shards"][0]["state_key"]
    state_before = state_document(repo, state_key)

    # The lifecycle configuration keeps the provider busy for a while: the kill lands mid-apply.
    deployment_file.write_text(kill_probe_file({"first": None, "second": 7}))
    runs_dir = repo / ".orchestrator" / "runs"
    runs_before = set(runs_dir.iterdir())
    process = subprocess.Popen([sys.executable, "-m", "orchestrator", "--repo", str(repo), "apply", "--deployment", KILL_PROBE, "--sandbox"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 240
    log_text = ""
    while time.monotonic() < deadline and "aws_s3_bucket_lifecycle_configuration.this[\"second\"]: Creating..." not in log_text:
        time.sleep(0.5)
        logs = [run / "shards" / "staging" / "kill-probe" / "s3" / "terraform.log" for run in set(runs_dir.iterdir()) - runs_before if run.is_dir()]
        log_text = "".join(log.read_text() for log in logs if log.exists())
    assert process.poll() is None, "the apply ended before it could be killed"
    victims = [process.pid, *descendants(process.pid)]
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait(timeout=30)

    state_after = state_document(repo, state_key)
    assert state_after["lineage"] == state_before["lineage"]
    assert state_after["serial"] >= state_before["serial"]

    code, output = run_cli(repo, "plan", "--deployment", KILL_PROBE, "--sandbox")
    assert code == 1, output
    assert "state lock is held (ID " in output
    assert "OperationTypeApply" in output
    assert "invoke unlock" in output

    code, output = run_cli(repo, "unlock", "--shard", f"{KILL_PROBE}/s3", "--sandbox")
    assert code == 4, output
    assert "held by" in output, output
    assert "--yes" in output, output
    code, output = run_cli(repo, "unlock", "--shard", f"{KILL_PROBE}/s3", "--sandbox", "--yes")
    assert code == 0, output
    assert "released lock" in output, output
    code, output = run_cli(repo, "unlock", "--shard", f"{KILL_PROBE}/s3", "--sandbox", "--yes")
    assert code == 0, output
    assert "not locked" in output, output

    code, output = run_cli(repo, "plan", "--deployment", KILL_PROBE, "--sandbox")
    assert code == 0, output


def test_two_concurrent_applies_on_one_shard(repo, tmp_path):
    # A lock wait longer than the other apply takes: one run waits, then finds nothing left to do.
    settings_file = repo / "orchestrator.toml"
    original_settings = settings_file.read_text()
    settings_file.write_text(original_settings.replace('lock_timeout = "4s"', 'lock_timeout = "180s"'))
    (repo / "Accounts" / "staging" / "concurrent.tfvars").write_text(
        'project = "concurrent"\nregion  = "eu-west-1"\n' + TAGS + '\ns3_buckets = {\n  shared = {\n    versioning    = false\n    force_destroy = true\n  }\n}\n'
    )
    # A second checkout of the same repository: its own working folders, the same state.
    other = tmp_path / "other-checkout"
    shutil.copytree(repo, other, ignore=shutil.ignore_patterns(".orchestrator"))
    try:
        processes = [
            subprocess.Popen([sys.executable, "-m", "orchestrator", "--repo", str(checkout), "apply", "--deployment", "staging/concurrent", "--sandbox", "--json", str(tmp_path / f"report-{index}.json")],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for index, checkout in enumerate((repo, other))
        ]
        outputs = [process.communicate(timeout=600)[0] for process in processes]
    finally:
        settings_file.write_text(original_settings)
    assert [process.returncode for process in processes] == [0, 0], outputs
    statuses = sorted(json.loads((tmp_path / f"report-{index}.json").read_text())["shards"][0]["status"] for index in range(2))
    assert statuses in (["applied", "no changes"], ["applied", "applied"]), statuses

    state_key = json.loads((tmp_path / "report-0.json").read_text())["shards"][0]["state_key"]
    state = state_document(repo, state_key)
    assert managed_addresses(state) >= {'aws_s3_bucket.this["shared"]'}
    buckets = [b["Name"] for b in clients(repo, "s3", "staging").list_buckets()["Buckets"] if b["Name"].startswith("concurrent-shared")]
    assert len(buckets) == 1


# --- errored.tfstate ------------------------------------------------------------------------------

# Terraform writes errored.tfstate when the backend refuses the state at the end of an apply.
# The sandbox cannot be made to reject one upload. So a wrapper in front of the real terraform
# fails the upload (and, on request, the push) at the process boundary. Everything else is real.
FAULTY_TERRAFORM = """#!/bin/sh
faults="{faults}"
if [ "$1" = apply ] && [ -e "$faults/upload" ]; then
  "{real}" "$@" || exit $?
  # The bucket keeps the state from before this apply; the errored copy is one serial ahead.
  "{real}" state pull | "{python}" -c 'import json, sys; s = json.load(sys.stdin); s["serial"] += 1; json.dump(s, sys.stdout)' > errored.tfstate
  echo "Error: Failed to save state: the S3 backend refused the upload (simulated)"
  exit 1
fi
if [ "$1" = state ] && [ "$2" = push ] && [ -e "$faults/push" ]; then
  echo "Error: Failed to persist state to backend (simulated)"
  exit 1
fi
exec "{real}" "$@"
"""


def test_errored_state_kept_then_pushed(repo, tmp_path):
    faults = tmp_path / "faults"
    faults.mkdir()
    wrapper = tmp_path / "terraform"
    wrapper.write_text(FAULTY_TERRAFORM.format(faults=faults, real=shutil.which("terraform"), python=sys.executable))
    wrapper.chmod(0o755)
    settings_file = repo / "orchestrator.toml"
    original_settings = settings_file.read_text()
    settings_file.write_text(original_settings.replace("[terraform]\n", f'[terraform]\nbinary = "{wrapper}"\n', 1))
    deployment = repo / "Accounts" / "staging" / "errored-probe.tfvars"
    shard = "staging/errored-probe/s3"
    workspace = repo / ".orchestrator" / "shards" / "staging" / "errored-probe" / "s3"
    kept = repo / ".orchestrator" / "errored-state" / "staging" / "errored-probe" / "s3"
    try:
        # The upload fails and so does the push right after it: the state is kept, encrypted.
        deployment.write_text(kill_probe_file({"one": None}).replace("kill-probe", "errored-probe"))
        (faults / "upload").touch()
        (faults / "push").touch()
        code, output = run_cli(repo, "apply", "--deployment", "staging/errored-probe", "--sandbox")
        assert code == 1, output
        result = latest_report(repo)["shards"][0]
        assert result["status"] == "failed", result
        assert "kept encrypted" in result["error"], result
        assert result["rollback"]["status"] == "not rolled back"
        assert not (workspace / "errored.tfstate").exists()
        encrypted = (kept / "errored.tfstate.enc").read_bytes()
        assert b"lineage" not in encrypted
        assert oct((kept / "errored.tfstate.enc").stat().st_mode & 0o777) == "0o600"

        # Further applies are blocked while the push keeps failing.
        (faults / "upload").unlink()
        code, output = run_cli(repo, "apply", "--deployment", "staging/errored-probe", "--sandbox")
        assert code == 1, output
        assert "blocked until it is pushed" in output, output
        code, output = run_cli(repo, "errored-state", "--shard", shard)
        assert code == 0, output
        assert "kept encrypted" in output, output

        # Once the backend takes it again, the next apply pushes the kept state first.
        (faults / "push").unlink()
        code, output = run_cli(repo, "apply", "--deployment", "staging/errored-probe", "--sandbox")
        assert code == 0, output
        result = latest_report(repo)["shards"][0]
        assert any("pushed the state kept from run" in note for note in result["notes"]), result
        assert not kept.joinpath("marker.json").exists()

        # A failed upload whose push works right away counts as applied: every change was made.
        deployment.write_text(kill_probe_file({"one": None, "two": None}).replace("kill-probe", "errored-probe"))
        (faults / "upload").touch()
        code, output = run_cli(repo, "apply", "--deployment", "staging/errored-probe", "--sandbox")
        assert code == 0, output
        result = latest_report(repo)["shards"][0]
        assert result["status"] == "applied", result
        assert any("pushed right after the apply" in note for note in result["notes"]), result
    finally:
        settings_file.write_text(original_settings)


# --- redaction through every output path -----------------------------------------------------------

CASE_DIR = Path(__file__).resolve().parent / "data" / "redaction-case"

# Terraform's apply prints the case's output (secrets included) and fails, as a real failing
# apply of that configuration would. Plan, show and the rollback that follows are real.
LEAKY_TERRAFORM = """#!/bin/sh
if [ "$1" = apply ]; then
  cat "{case}"
  echo "Error: creating Lambda Function (api): simulated failure after the output above"
  exit 1
fi
exec "{real}" "$@"
"""


def test_redaction_on_every_output_path(repo, tmp_path):
    wrapper = tmp_path / "terraform"
    wrapper.write_text(LEAKY_TERRAFORM.format(case=CASE_DIR / "apply-output.txt", real=shutil.which("terraform")))
    wrapper.chmod(0o755)
    settings_file = repo / "orchestrator.toml"
    original_settings = settings_file.read_text()
    settings_file.write_text(original_settings.replace("[terraform]\n", f'[terraform]\nbinary = "{wrapper}"\n', 1))
    (repo / "Accounts" / "staging" / "leaky.tfvars").write_text(kill_probe_file({"leaky": None}).replace("kill-probe", "leaky"))
    json_report, markdown_report = tmp_path / "report.json", tmp_path / "report.md"
    try:
        code, console = run_cli(repo, "apply", "--deployment", "staging/leaky", "--sandbox", "--json", str(json_report), "--markdown", str(markdown_report))
    finally:
        settings_file.write_text(original_settings)
    assert code == 1, console
    run_dir = repo / ".orchestrator" / "runs" / json.loads(json_report.read_text())["run_id"]

    seen = {"console": console, "--json report": json_report.read_text(), "--markdown report": markdown_report.read_text()}
    for path in run_dir.rglob("*"):
        if path.is_file():
            seen[str(path.relative_to(run_dir))] = path.read_text(errors="replace")
    assert {"report.json", "report.md", "shards/staging/leaky/s3/terraform.log"} <= set(seen)
    assert "sk_live_" not in seen["shards/staging/leaky/s3/terraform.log"]

    secrets = [line for line in (CASE_DIR / "must-not-appear.txt").read_text().splitlines() if line.strip()]
    for where, text in seen.items():
        for secret in secrets:
            assert secret not in text, f"{secret!r} leaked into {where}"
    log = seen["shards/staging/leaky/s3/terraform.log"]
    for line in (CASE_DIR / "must-stay.txt").read_text().splitlines():
        if line.strip():
            assert line in log, f"{line!r} was lost from the log"
    assert "(redacted)" in seen["report.json"]
    assert "(redacted)" in console

    # The encrypted audit record is the one place that keeps the output as Terraform printed it.
    settings = load_settings(repo)
    s3 = clients(repo, "s3", "state", settings.audit.region)
    run_id = json.loads(json_report.read_text())["run_id"]
    records = [r for r in query(settings, s3, date.today(), date.today(), action="apply") if r.run_id == run_id]
    assert records
    assert all(secret in records[0].output for secret in secrets)
    keys = [item["Key"] for item in s3.list_objects_v2(Bucket=settings.audit.bucket, Prefix="audit/")["Contents"] if run_id in item["Key"]]
    assert keys
    assert all(s3.head_object(Bucket=settings.audit.bucket, Key=key)["ServerSideEncryption"] in ("AES256", "aws:kms") for key in keys)


def test_bootstrap_is_idempotent(repo):
    for _ in range(2):
        code, output = run_cli(repo, "bootstrap", "--sandbox")
        assert code == 0, output
        assert "audit bucket tdo-terraform-audit" in output
    s3 = clients(repo, "s3", "state")
    rule = s3.get_bucket_lifecycle_configuration(Bucket="tdo-terraform-audit")["Rules"][0]
    assert rule["Expiration"]["Days"] == 90
    assert rule["NoncurrentVersionExpiration"]["NoncurrentDays"] == 90
    assert s3.get_bucket_versioning(Bucket="tdo-tfstate-eu-west-1")["Status"] == "Enabled"
