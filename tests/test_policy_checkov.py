"""Checkov scans of plan JSONs with a real Checkov, installed once into its own venv.

The first run installs Checkov from the package index (about 30 s), into
``$ORCHESTRATOR_TOOLS_DIR``, else into the git-ignored ``.orchestrator/tools`` when
``.orchestrator`` exists, else into a temporary folder. Each scan starts Checkov, which takes
about 3 s. Failure cases that Checkov cannot be made to produce (a crash, invalid output, a
timeout) use small stand-in scripts in place of the executable.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from orchestrator.errors import ConfigurationError
from orchestrator.policy import checkov as checkov_module
from orchestrator.policy.checkov import CHECKOV_VERSION, CheckovError, ensure_checkov, run_checkov

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PLANS_DIR = PROJECT_ROOT / "tests" / "data" / "plans"
MODULE_PLAN = PROJECT_ROOT / "tests" / "data" / "checkov" / "module-plan.json"

EXAMPLE_PLANS = {path.stem: path for path in sorted(PLANS_DIR.glob("*.json"))}

# Checks that fail on the example plans with Checkov 3.3.30 offline. The examples meet the
# encryption, public-access and key-rotation rules (CKV_AWS_19, CKV_AWS_53 to 56 and CKV_AWS_7
# pass), and these are other checks. Update this table when CHECKOV_VERSION changes.
EXPECTED_FAILURES = {
    "prod--orders-api--iam": set(),
    "staging--orders-api--iam": set(),
    "prod--payments--kms": set(),
    "staging--payments--kms": set(),
    # Dead-letter queue, VPC, code signing and X-Ray tracing of the Lambda function.
    "prod--orders-api--lambda": {"CKV_AWS_116", "CKV_AWS_117", "CKV_AWS_272", "CKV_AWS_50"},
    "staging--orders-api--lambda": {"CKV_AWS_116", "CKV_AWS_117", "CKV_AWS_272", "CKV_AWS_50"},
    # Lifecycle configuration, event notifications, cross-region replication, access logging.
    "prod--payments--s3": {"CKV2_AWS_61", "CKV2_AWS_62", "CKV_AWS_144", "CKV_AWS_18"},
    "staging--payments--s3": {"CKV2_AWS_61", "CKV2_AWS_62", "CKV_AWS_144", "CKV_AWS_18"},
    # As above, plus KMS instead of SSE-S3 (CKV_AWS_145) and versioning (CKV_AWS_21). The
    # cache bucket has a lifecycle configuration, so CKV2_AWS_61 passes.
    "shared-services--build-cache--s3": {"CKV2_AWS_62", "CKV_AWS_144", "CKV_AWS_145", "CKV_AWS_18", "CKV_AWS_21"},
    # The terraform-plan-reader role trusts the account root with a PrincipalArn condition,
    # which Checkov does not evaluate.
    "shared-services--ci-roles--iam": {"CKV_AWS_61"},
}

EMPTY_PLAN = {
    "format_version": "1.2",
    "terraform_version": "1.11.4",
    "planned_values": {"root_module": {}},
    "configuration": {"root_module": {}},
    "applyable": False,
    "complete": True,
    "errored": False,
}


def _tools_dir(tmp_path_factory) -> Path:
    configured = os.environ.get("ORCHESTRATOR_TOOLS_DIR")
    if configured:
        return Path(configured)
    if (PROJECT_ROOT / ".orchestrator").is_dir():
        return PROJECT_ROOT / ".orchestrator" / "tools"
    return tmp_path_factory.mktemp("tools")


@pytest.fixture(scope="session")
def checkov(tmp_path_factory) -> Path:
    """The ``checkov`` executable of a real Checkov environment, installed on first use."""
    return ensure_checkov(_tools_dir(tmp_path_factory))


@pytest.fixture(scope="module")
def example_results(checkov):
    """One scan of all example plans and the module plan, shared by the tests that only read it."""
    return run_checkov(checkov, {**EXAMPLE_PLANS, "module": MODULE_PLAN})


def write_script(path: Path, body: str) -> Path:
    """Write an executable stand-in for the checkov executable."""
    path.write_text(textwrap.dedent(body).lstrip(), encoding="utf-8")
    path.chmod(0o755)
    return path


def copy_plan(source: Path, destination: Path) -> Path:
    destination.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, destination)
    return destination


def process_ends(pid: int, within: float) -> bool:
    """Return whether process ``pid`` is gone or a zombie within ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state == "Z":
            return True
        time.sleep(0.1)
    return False


def failed_ids(result) -> set[str]:
    return {finding.check_id for finding in result.failed_checks}


# --- installation -------------------------------------------------------------------------


def test_ensure_checkov_installs_pinned_version(checkov):
    reported = subprocess.run([str(checkov), "--version"], capture_output=True, text=True, check=True,
                              env={"PATH": os.defpath, "CKV_SKIP_PACKAGE_UPDATE_CHECK": "true"})
    assert reported.stdout.strip() == CHECKOV_VERSION
    assert checkov.parent.parent.name == "checkov"


def test_ensure_checkov_reuses_environment(checkov, monkeypatch):
    def no_subprocess(*args, **kwargs):
        raise AssertionError(f"ensure_checkov started a process on the fast path: {args}")

    monkeypatch.setattr(subprocess, "run", no_subprocess)
    monkeypatch.setattr(subprocess, "Popen", no_subprocess)

    started = time.monotonic()
    assert ensure_checkov(checkov.parent.parent.parent) == checkov
    assert time.monotonic() - started < 1


def test_ensure_checkov_installs_once_when_concurrent(tmp_path, monkeypatch):
    installs = []

    def slow_fake_install(env_dir, version):
        installs.append(version)
        time.sleep(0.5)
        (env_dir / "bin").mkdir(parents=True)
        (env_dir / "bin" / "python").write_text("")
        (env_dir / "bin" / "checkov").write_text("")
        (env_dir / checkov_module.INSTALLED_MARKER).write_text(json.dumps({"checkov_version": version}))

    monkeypatch.setattr(checkov_module, "_install", slow_fake_install)

    # Each thread opens the lock file on its own, and flock locks between open file
    # descriptions, so threads contend for it as processes would.
    returned = []
    threads = [threading.Thread(target=lambda: returned.append(ensure_checkov(tmp_path, version="9.9.9"))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert installs == ["9.9.9"]
    assert returned == [tmp_path / "checkov" / "bin" / "checkov"] * 4


def test_ensure_checkov_failed_install_is_clear(tmp_path, monkeypatch):
    # An environment of another version, which must be replaced.
    old_env = tmp_path / "checkov"
    (old_env / "bin").mkdir(parents=True)
    (old_env / "bin" / "python").write_text("")
    (old_env / "bin" / "checkov").write_text("")
    (old_env / checkov_module.INSTALLED_MARKER).write_text(json.dumps({"checkov_version": "0.0.1"}))

    # pip finds no package offline and fails at once, without any network call.
    empty_wheel_folder = tmp_path / "no-wheels"
    empty_wheel_folder.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(empty_wheel_folder))

    with pytest.raises(CheckovError, match="installing Checkov 3.3.30 failed") as raised:
        ensure_checkov(tmp_path, version="3.3.30")

    assert "package index" in str(raised.value)
    assert not old_env.exists()
    assert (tmp_path / "checkov-install.log").exists()


def test_project_venv_keeps_python_hcl2(checkov):
    assert importlib.metadata.version("python-hcl2").split(".")[0] == "8"
    with pytest.raises(importlib.metadata.PackageNotFoundError):
        importlib.metadata.distribution("bc-python-hcl2")
    assert importlib.util.find_spec("checkov") is None

    import hcl2

    assert Path(hcl2.__file__).resolve().is_relative_to(Path(sys.prefix).resolve())
    assert not checkov.resolve().is_relative_to(Path(sys.prefix).resolve())

    # The Checkov environment does contain the conflicting package, so keeping it apart matters.
    tool_python = checkov.parent / "python"
    probe = "import importlib.metadata as m; print(m.version('bc-python-hcl2'))"
    assert subprocess.run([str(tool_python), "-c", probe], capture_output=True, text=True).returncode == 0


# --- scanning real plans ------------------------------------------------------------------


def test_example_plans_fail_expected_checks(example_results):
    for shard_id, expected in EXPECTED_FAILURES.items():
        result = example_results[shard_id]
        assert result.error is None, shard_id
        assert failed_ids(result) == expected, shard_id
        assert result.passed == (not expected), shard_id
        assert result.passed_count > 0, shard_id
        assert result.soft_failed == [], shard_id


def test_example_findings_carry_details(example_results):
    findings = example_results["prod--payments--s3"].failed_checks
    logging_findings = [finding for finding in findings if finding.check_id == "CKV_AWS_18"]

    assert {finding.resource_address for finding in logging_findings} == {'aws_s3_bucket.this["exports"]', 'aws_s3_bucket.this["ledger"]'}
    assert logging_findings[0].check_name == "Ensure the S3 bucket has access logging enabled"
    assert all(not finding.soft_failed for finding in findings)
    # Offline, Checkov reports neither severities nor guideline URLs.
    assert all(finding.severity is None for finding in findings)
    assert all(finding.guideline is None for finding in findings)


def test_module_addresses_are_complete(example_results):
    result = example_results["module"]
    replication = {finding.resource_address for finding in result.failed_checks if finding.check_id == "CKV_AWS_144"}

    assert replication == {
        "aws_s3_bucket.root",
        'module.storage.aws_s3_bucket.this["exports"]',
        'module.storage.aws_s3_bucket.this["ledger"]',
        "module.storage.module.archive.aws_s3_bucket.this",
        "module.counted[0].aws_s3_bucket.this",
    }


def test_skip_list_honoured(checkov):
    results = run_checkov(checkov, {"s3": EXAMPLE_PLANS["prod--payments--s3"]}, skip_checks=["CKV_AWS_18", "CKV2_AWS_62"])
    result = results["s3"]

    assert failed_ids(result) == {"CKV2_AWS_61", "CKV_AWS_144"}
    assert result.soft_failed == []
    assert not result.passed


def test_soft_fail_list_honoured(checkov):
    soft_fail_checks = ["CKV_AWS_18", "CKV_AWS_144", "CKV2_*"]
    results = run_checkov(checkov, {"s3": EXAMPLE_PLANS["prod--payments--s3"]}, soft_fail_checks=soft_fail_checks)
    result = results["s3"]

    assert result.passed
    assert result.failed_checks == []
    assert {finding.check_id for finding in result.soft_failed} == {"CKV2_AWS_61", "CKV2_AWS_62", "CKV_AWS_144", "CKV_AWS_18"}
    assert all(finding.soft_failed for finding in result.soft_failed)


def test_threshold_without_severities_fails_hard(checkov, caplog):
    results = run_checkov(checkov, {"s3": EXAMPLE_PLANS["prod--payments--s3"]}, hard_fail_threshold="CRITICAL")

    assert failed_ids(results["s3"]) == EXPECTED_FAILURES["prod--payments--s3"]
    assert not results["s3"].passed
    assert "without a severity" in caplog.text


def test_bad_plan_files_fail_alone(checkov, tmp_path):
    broken = tmp_path / "broken" / "plan.json"
    broken.parent.mkdir()
    broken.write_text('{"format_version": "1.2", "planned_values": {', encoding="utf-8")
    not_a_plan = tmp_path / "other" / "plan.json"
    not_a_plan.parent.mkdir()
    not_a_plan.write_text('{"hello": "world"}', encoding="utf-8")
    malformed = tmp_path / "malformed" / "plan.json"
    malformed.parent.mkdir()
    malformed.write_text(json.dumps({**EMPTY_PLAN, "planned_values": []}), encoding="utf-8")
    wrong_suffix = copy_plan(EXAMPLE_PLANS["prod--payments--kms"], tmp_path / "suffix" / "plan.out")
    good = copy_plan(EXAMPLE_PLANS["prod--payments--kms"], tmp_path / "good" / "plan.json")

    results = run_checkov(checkov, {
        "broken": broken, "not-a-plan": not_a_plan, "malformed": malformed,
        "wrong-suffix": wrong_suffix, "missing": tmp_path / "missing" / "plan.json", "good": good,
    })

    for shard_id in ("broken", "not-a-plan", "malformed", "wrong-suffix", "missing"):
        assert not results[shard_id].passed, shard_id
        assert results[shard_id].error, shard_id
    assert "not valid JSON" in results["broken"].error
    assert "not a Terraform plan JSON" in results["not-a-plan"].error
    assert "malformed" in results["malformed"].error
    assert ".json" in results["wrong-suffix"].error
    assert "cannot read" in results["missing"].error
    assert results["good"].passed
    assert results["good"].passed_count == 5


def test_zero_resource_plan_passes(checkov, tmp_path):
    empty = tmp_path / "empty" / "plan.json"
    empty.parent.mkdir()
    empty.write_text(json.dumps(EMPTY_PLAN), encoding="utf-8")

    # Checkov prints only a summary for a scan without resources, and a full report otherwise.
    alone = run_checkov(checkov, {"empty": empty})
    together = run_checkov(checkov, {"empty": empty, "kms": EXAMPLE_PLANS["prod--payments--kms"]})

    for results in (alone, together):
        assert results["empty"].passed
        assert results["empty"].error is None
        assert results["empty"].passed_count == 0
        assert results["empty"].failed_checks == []
    assert together["kms"].passed_count == 5


def test_one_process_for_many_plans(checkov, tmp_path):
    starts = tmp_path / "starts.log"
    wrapper = write_script(tmp_path / "checkov", f"""
        #!/bin/sh
        echo started >> '{starts}'
        exec '{checkov}' "$@"
    """)
    plans = {shard_id: copy_plan(path, tmp_path / "run" / "shards" / shard_id / "plan.json") for shard_id, path in EXAMPLE_PLANS.items()}

    results = run_checkov(wrapper, plans)

    assert starts.read_text().splitlines() == ["started"]
    assert set(results) == set(plans)
    assert all(result.error is None for result in results.values())
    assert {shard_id: failed_ids(result) for shard_id, result in results.items()} == EXPECTED_FAILURES


def test_scan_makes_no_network_call(checkov, tmp_path):
    # An audit hook records every name lookup and connection attempt of Checkov's Python.
    audit_dir = tmp_path / "audit"
    audit_dir.mkdir()
    events = tmp_path / "network-events.log"
    (audit_dir / "sitecustomize.py").write_text(textwrap.dedent(f"""
        import sys

        def record_network(event, args):
            if event in ("socket.getaddrinfo", "socket.connect", "socket.gethostbyname"):
                with open({str(events)!r}, "a") as log:
                    log.write(f"{{event}} {{args!r}}\\n")

        sys.addaudithook(record_network)
    """), encoding="utf-8")
    wrapper = write_script(tmp_path / "checkov", f"""
        #!/bin/sh
        PYTHONPATH='{audit_dir}' exec '{checkov}' "$@"
    """)

    results = run_checkov(wrapper, {"kms": EXAMPLE_PLANS["prod--payments--kms"]})

    assert results["kms"].passed
    assert not events.exists(), events.read_text()


# --- failures of the Checkov process ------------------------------------------------------


def test_checkov_parse_error_fails_shard(tmp_path):
    good = copy_plan(EXAMPLE_PLANS["prod--payments--kms"], tmp_path / "good" / "plan.json")
    unparsable = copy_plan(EXAMPLE_PLANS["staging--payments--kms"], tmp_path / "bad" / "plan.json")
    report = {"check_type": "terraform_plan", "results": {"passed_checks": [], "failed_checks": [], "skipped_checks": [], "parsing_errors": [str(unparsable)]}}
    fake = write_script(tmp_path / "checkov", f"""
        #!/bin/sh
        cat <<'EOF'
        {json.dumps(report)}
        EOF
    """)

    results = run_checkov(fake, {"good": good, "bad": unparsable})

    assert results["good"].passed
    assert not results["bad"].passed
    assert "could not parse" in results["bad"].error


@pytest.mark.parametrize("body, message", [
    ("echo 'Traceback: boom' >&2; exit 2", "exited with code 2"),
    ("echo 'not json'", "not JSON"),
])
def test_checkov_failure_raises(tmp_path, body, message):
    fake = write_script(tmp_path / "checkov", f"#!/bin/sh\n{body}\n")

    with pytest.raises(CheckovError, match=message):
        run_checkov(fake, {"kms": EXAMPLE_PLANS["prod--payments--kms"]})


def test_checkov_timeout_raises_and_kills(tmp_path):
    child_pid_file = tmp_path / "child.pid"
    fake = write_script(tmp_path / "checkov", f"""
        #!/bin/sh
        sleep 60 &
        echo $! > '{child_pid_file}'
        wait
    """)

    started = time.monotonic()
    with pytest.raises(CheckovError, match="timed out after 1 s"):
        run_checkov(fake, {"kms": EXAMPLE_PLANS["prod--payments--kms"]}, timeout=1)

    assert time.monotonic() - started < 10
    child_pid = int(child_pid_file.read_text())
    assert process_ends(child_pid, within=5)


def test_checkov_gets_minimal_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("BC_API_KEY", "must-not-reach-checkov")
    monkeypatch.setenv("CKV_SKIP_CHECK", "CKV_AWS_7")
    captured = tmp_path / "captured.json"
    fake = write_script(tmp_path / "checkov", f"""
        #!{sys.executable}
        import json, os, sys
        with open({str(captured)!r}, "w") as out:
            json.dump({{"environ": dict(os.environ), "argv": sys.argv, "cwd": os.getcwd()}}, out)
        print(json.dumps({{"passed": 0, "failed": 0}}))
    """)

    run_checkov(fake, {"kms": EXAMPLE_PLANS["prod--payments--kms"]}, skip_checks=["CKV_AWS_18"])
    seen = json.loads(captured.read_text())

    assert "BC_API_KEY" not in seen["environ"]
    assert "CKV_SKIP_CHECK" not in seen["environ"]
    assert seen["environ"]["CKV_SKIP_PACKAGE_UPDATE_CHECK"] == "true"
    assert seen["environ"]["HOME"] == seen["cwd"]
    assert seen["environ"]["HOME"] != os.environ["HOME"]
    assert "--skip-download" in seen["argv"]
    assert seen["argv"][seen["argv"].index("--skip-check") + 1] == "CKV_AWS_18"
    assert seen["argv"][seen["argv"].index("--file") + 1] == str(EXAMPLE_PLANS["prod--payments--kms"].resolve())


def test_threshold_applies_to_reported_severities(tmp_path):
    plan = EXAMPLE_PLANS["prod--payments--kms"].resolve()

    def failed(check_id, severity):
        return {"check_id": check_id, "check_name": f"name of {check_id}", "file_abs_path": str(plan),
                "resource": 'aws_kms_key.this["data"]', "resource_address": 'aws_kms_key.this["data"]',
                "severity": severity, "guideline": f"https://docs.example/{check_id}"}

    report = {"check_type": "terraform_plan", "results": {
        "passed_checks": [], "skipped_checks": [], "parsing_errors": [],
        "failed_checks": [failed("CKV_LOW", "LOW"), failed("CKV_HIGH", "HIGH"), failed("CKV_NONE", None)],
    }}
    fake = write_script(tmp_path / "checkov", f"""
        #!/bin/sh
        cat <<'EOF'
        {json.dumps(report)}
        EOF
    """)

    result = run_checkov(fake, {"kms": plan}, hard_fail_threshold="medium")["kms"]

    assert failed_ids(result) == {"CKV_HIGH", "CKV_NONE"}
    assert [finding.check_id for finding in result.soft_failed] == ["CKV_LOW"]
    assert result.soft_failed[0].guideline == "https://docs.example/CKV_LOW"
    assert result.soft_failed[0].severity == "LOW"


# --- settings -----------------------------------------------------------------------------


@pytest.mark.parametrize("settings, message", [
    ({"skip_checks": ["LOW"]}, "severity"),
    ({"soft_fail_checks": ["CKV_AWS_1,CKV_AWS_2"]}, "invalid check ID"),
    ({"skip_checks": "CKV_AWS_18"}, "list of check IDs"),
    ({"hard_fail_threshold": "SEVERE"}, "invalid Checkov hard_fail_threshold"),
])
def test_invalid_settings_rejected(tmp_path, settings, message):
    with pytest.raises(ConfigurationError, match=message):
        run_checkov(tmp_path / "checkov", {"kms": EXAMPLE_PLANS["prod--payments--kms"]}, **settings)


def test_address_without_module_path_completed():
    plan_addresses = {"module.storage.aws_s3_bucket.this[\"a\"]", "aws_s3_bucket.root"}
    stripped = {"resource": 'aws_s3_bucket.this["a"]', "check_result": {"entity": {"aws_s3_bucket": {"this": {"bucket": ["a"]}}}}}

    assert checkov_module._full_address(stripped, plan_addresses) == 'module.storage.aws_s3_bucket.this["a"]'

    with_entity_address = {"resource": 'aws_s3_bucket.this["a"]', "check_result": {"entity": {"aws_s3_bucket": {"this": {"__address__": 'module.storage.aws_s3_bucket.this["a"]'}}}}}
    assert checkov_module._full_address(with_entity_address, set()) == 'module.storage.aws_s3_bucket.this["a"]'
    assert checkov_module._full_address({"resource": "aws_s3_bucket.root"}, plan_addresses) == "aws_s3_bucket.root"
