"""The Terraform runner, with a fake terraform at the process boundary, and the argv builders."""

from __future__ import annotations

import os
import signal
import stat
import sys
import threading
import time
from pathlib import Path

import pytest

from orchestrator.terraform import (
    BackendMissing,
    CommandResult,
    Interrupted,
    ProcessRegistry,
    ProviderNotFound,
    Runner,
    StateLockError,
    TerraformError,
    TerraformNotFound,
    apply_argv,
    init_argv,
    plan_argv,
    raise_for_failure,
    resolve_binary,
    show_json_argv,
)

LOCK_OUTPUT = """
Error: Error acquiring the state lock

Error message: operation error S3: PutObject, https response error StatusCode: 412
Lock Info:
  ID:        2b6a6738-5dd5-4f7b-b0f4-e1b2d1f6b2a1
  Path:      tdo-tfstate-eu-west-1/s3/333333333333/eu-west-1/payments/terraform.tfstate
  Operation: OperationTypeApply
  Who:       runner@ci-42
  Version:   1.11.4
  Created:   2026-12-04 10:00:00.123 +0000 UTC
  Info:
"""


def fake_tool(tmp_path: Path, body: str) -> str:
    script = tmp_path / "fake-terraform"
    script.write_text(f"#!{sys.executable}\nimport sys, os, time, signal\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


def runner_for(tmp_path: Path, lines: list[str], registry=None, timeout=60) -> Runner:
    return Runner(cwd=tmp_path, environment={"PATH": os.environ["PATH"]}, registry=registry or ProcessRegistry(), timeout_seconds=timeout, log_line=lines.append)


@pytest.mark.parametrize(
    "argv, expected",
    [
        (init_argv("terraform"), ["terraform", "init", "-input=false", "-no-color", "-reconfigure"]),
        (plan_argv("tf", "v.json", "p.tfplan", "5m"), ["tf", "plan", "-input=false", "-no-color", "-detailed-exitcode", "-lock-timeout=5m", "-var-file=v.json", "-out=p.tfplan"]),
        (plan_argv("tf", "v.json", "p", "1m", refresh_only=True)[-1], "-refresh-only"),
        (show_json_argv("tf", "p"), ["tf", "show", "-json", "-no-color", "p"]),
        (apply_argv("tf", "p", "5m"), ["tf", "apply", "-input=false", "-no-color", "-auto-approve", "-lock-timeout=5m", "p"]),
    ],
)
def test_argv_builders(argv, expected):
    assert argv == expected


def test_output_streamed_and_captured(tmp_path):
    binary = fake_tool(tmp_path, "print('line one'); print('line two', file=sys.stderr); sys.exit(2)")
    lines: list[str] = []
    result = runner_for(tmp_path, lines).run([binary, "plan"], ok_codes=(0, 2))

    assert result.exit_code == 2
    assert result.ok
    assert "line one" in result.output and "line two" in result.output
    assert "line one" in lines and "line two" in lines


def test_large_output_does_not_deadlock(tmp_path):
    binary = fake_tool(tmp_path, "for i in range(20000): print('row', i); print('err', i, file=sys.stderr)")
    result = runner_for(tmp_path, []).run([binary])
    assert result.output.count("row") == 20000


def test_stdout_to_private_file(tmp_path):
    binary = fake_tool(tmp_path, "print('{\"secret\": 1}'); print('progress', file=sys.stderr)")
    lines: list[str] = []
    target = tmp_path / "plan.json"
    runner_for(tmp_path, lines).run([binary, "show"], stdout_path=target)

    assert target.read_text().strip() == '{"secret": 1}'
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert not any("secret" in line for line in lines)


def test_interrupt_forwards_sigint_and_waits(tmp_path):
    marker = tmp_path / "released"
    body = f"""
def on_interrupt(signum, frame):
    time.sleep(0.5)  # pretend to release the state lock
    open({str(marker)!r}, "w").write("released")
    sys.exit(1)
signal.signal(signal.SIGINT, on_interrupt)
print("started", flush=True)
time.sleep(30)
"""
    binary = fake_tool(tmp_path, body)
    registry = ProcessRegistry()
    runner = runner_for(tmp_path, [], registry)

    def interrupt_soon():
        while not registry.running():
            time.sleep(0.05)
        time.sleep(0.3)
        registry.interrupt()

    threading.Thread(target=interrupt_soon).start()
    with pytest.raises(Interrupted):
        runner.run([binary, "apply"])
    assert marker.read_text() == "released"
    with pytest.raises(Interrupted, match="not started"):
        runner.run([binary, "apply"])


def test_timeout_sends_sigint(tmp_path):
    binary = fake_tool(tmp_path, "signal.signal(signal.SIGINT, lambda s, f: sys.exit(7))\ntime.sleep(30)")
    result = runner_for(tmp_path, [], timeout=0.5).run([binary])
    assert result.exit_code == 7


def test_lock_error_carries_lock_details():
    result = CommandResult(["terraform", "apply"], ".", 1, LOCK_OUTPUT, 1.0)
    with pytest.raises(StateLockError) as caught:
        raise_for_failure(result, "prod/payments/s3: terraform apply")
    assert caught.value.lock_info["ID"] == "2b6a6738-5dd5-4f7b-b0f4-e1b2d1f6b2a1"
    assert caught.value.lock_info["Who"] == "runner@ci-42"
    assert "invoke unlock" in str(caught.value)


@pytest.mark.parametrize(
    "output, error_type",
    [
        ("Error: Failed to query available provider packages", ProviderNotFound),
        ("Error: Failed to get existing workspaces: S3 bucket \"x\" does not exist.", BackendMissing),
        ("Error: something else", TerraformError),
    ],
)
def test_failures_are_typed(output, error_type):
    with pytest.raises(error_type):
        raise_for_failure(CommandResult(["terraform", "init"], ".", 1, output, 1.0), "init")


def test_success_raises_nothing():
    raise_for_failure(CommandResult(["terraform", "plan"], ".", 2, "", 1.0, ok_codes=(0, 2)), "plan")


def test_missing_binary_is_clear(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(TerraformNotFound, match="not found on PATH; install Terraform"):
        resolve_binary("terraform")
