"""Tests of the Rego policy checks: the engine wrapper and the policies shipped in policies/.

Every test runs the regopy engine for real. The tests marked ``requires_opa`` run the
``opa`` binary and are skipped, with the reason shown by ``pytest -rs``, where none is on PATH.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from orchestrator.errors import OrchestratorError
from orchestrator.policy.opa import (
    PolicyEngineError,
    PolicyFinding,
    PolicyResult,
    build_policy_input,
    decode_unicode_escapes,
    load_policies,
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SHIPPED_POLICIES = PROJECT_ROOT / "policies"
PLANS_DIR = Path(__file__).parent / "data" / "plans"
PLAN_NAMES = sorted(path.stem for path in PLANS_DIR.glob("*.json"))

# One per deny, violation or warn rule of the shipped policies: (package, rule name).
SHIPPED_RULE_COUNT = 8

requires_opa = pytest.mark.skipif(
    shutil.which("opa") is None,
    reason="no opa binary on PATH, so the opa engine was not run against real OPA",
)


# --- helpers ---------------------------------------------------------------------------


def load_plan(name: str) -> dict:
    """Return a fresh copy of an example plan, such as ``prod--payments--s3``."""
    return json.loads((PLANS_DIR / f"{name}.json").read_text())


def shard_metadata(name: str, plan: dict) -> dict:
    """Return the shard metadata of an example plan, read from its file name and its variables."""
    account, project_folder, service = name.split("--")
    variables = {key: value.get("value") for key, value in plan["variables"].items()}
    return {
        "account": account,
        "account_id": variables["account_id"],
        "environment": variables["environment"],
        "region": variables["region"],
        "service": service,
        "project": variables["project"],
        "shard": f"{account}/{project_folder}/{service}",
    }


def policy_input(name: str, plan: dict, environment: str | None = None) -> dict:
    """Return the policy input of ``plan``, optionally with another environment than the plan's own."""
    metadata = shard_metadata(name, plan)
    if environment is not None:
        metadata["environment"] = environment
    return build_policy_input(plan, metadata)


def resource_change(plan: dict, address: str) -> dict:
    return next(change for change in plan["resource_changes"] if change["address"] == address)


def without_resource(plan: dict, address: str) -> dict:
    plan["resource_changes"] = [change for change in plan["resource_changes"] if change["address"] != address]
    return plan


def write_policies(folder: Path, files: dict[str, str]) -> Path:
    """Write policy files (name to source) into ``folder`` and return it."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, source in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source).lstrip())
    return folder


def messages(findings: list[PolicyFinding]) -> list[str]:
    return [finding.message for finding in findings]


@pytest.fixture(scope="module")
def shipped_policies():
    return load_policies(SHIPPED_POLICIES, engine="regopy")


@pytest.fixture
def no_opa_on_path(tmp_path, monkeypatch):
    """Hide any opa binary, so that engine="auto" has to pick regopy."""
    empty_bin = tmp_path / "empty-bin"
    empty_bin.mkdir()
    monkeypatch.setenv("PATH", str(empty_bin))


# --- build_policy_input ------------------------------------------------------------------


def test_build_policy_input_adds_metadata():
    plan = load_plan("prod--payments--kms")
    metadata = shard_metadata("prod--payments--kms", plan)

    document = build_policy_input(plan, metadata)

    assert document["orchestrator"] == metadata
    assert document["resource_changes"] == plan["resource_changes"]
    assert "orchestrator" not in plan


def test_build_policy_input_rejects_policy_input():
    document = build_policy_input(load_plan("prod--payments--kms"), {"environment": "prod"})

    with pytest.raises(ValueError, match="already has a top-level key 'orchestrator'"):
        build_policy_input(document, {"environment": "prod"})


def test_build_policy_input_rejects_non_objects():
    with pytest.raises(TypeError, match="plan must be the JSON object"):
        build_policy_input([], {})
    with pytest.raises(TypeError, match="metadata must be a dict"):
        build_policy_input({}, None)


# --- engine: verdicts and message forms ---------------------------------------------------


def test_pass_fail_and_warn(tmp_path):
    folder = write_policies(tmp_path / "policies", {
        "main.rego": """
            package main

            deny contains msg if {
                input.orchestrator.environment == "prod"
                msg := sprintf("shard %s is prod", [input.orchestrator.shard])
            }

            violation contains "no resources" if count(input.resource_changes) == 0

            warn contains "always warns" if true
        """,
    })
    policy_set = load_policies(folder, engine="regopy")

    staging = policy_set.evaluate(build_policy_input({"resource_changes": [{}]}, {"environment": "staging", "shard": "staging/a/s3"}))
    prod = policy_set.evaluate(build_policy_input({"resource_changes": []}, {"environment": "prod", "shard": "prod/a/s3"}))

    assert staging.passed
    assert staging.failures == []
    assert staging.warnings == [PolicyFinding("main", "warn", "always warns", None)]
    assert not prod.passed
    assert prod.failures == [
        PolicyFinding("main", "deny", "shard prod/a/s3 is prod", None),
        PolicyFinding("main", "violation", "no resources", None),
    ]
    assert prod.rules_evaluated == 3
    assert prod.engine.startswith("regopy ")
    assert prod.duration_seconds > 0


def test_warnings_alone_pass(tmp_path):
    folder = write_policies(tmp_path / "policies", {"main.rego": 'package main\n\nwarn contains "look" if true\n'})

    result = load_policies(folder, engine="regopy").evaluate({})

    assert result.passed
    assert messages(result.warnings) == ["look"]


def test_structured_messages(tmp_path):
    folder = write_policies(tmp_path / "policies", {
        "main.rego": """
            package main

            deny contains {"msg": sprintf("%s is public", [change.address]), "resource": change.address, "details": {"acl": "public-read"}} if {
                some change in input.resource_changes
                change.change.after.acl == "public-read"
            }

            warn contains {"msg": "no resource field"} if true
        """,
    })
    plan = {"resource_changes": [{"address": 'aws_s3_bucket.this["logs"]', "change": {"after": {"acl": "public-read"}}}]}

    result = load_policies(folder, engine="regopy").evaluate(plan)

    assert result.failures == [PolicyFinding("main", "deny", 'aws_s3_bucket.this["logs"] is public', 'aws_s3_bucket.this["logs"]')]
    assert result.warnings == [PolicyFinding("main", "warn", "no resource field", None)]


def test_message_object_without_msg_raises(tmp_path):
    folder = write_policies(tmp_path / "policies", {"main.rego": 'package main\n\ndeny contains {"message": "wrong field"} if true\n'})
    policy_set = load_policies(folder, engine="regopy")

    with pytest.raises(PolicyEngineError, match="must be a string or an object with a string msg field"):
        policy_set.evaluate({})


def test_rule_of_numbers_raises(tmp_path):
    folder = write_policies(tmp_path / "policies", {"main.rego": "package main\n\ndeny contains 42 if true\n"})
    policy_set = load_policies(folder, engine="regopy")

    with pytest.raises(PolicyEngineError, match='rule data\\["main"\\]\\["deny"\\] returned the message 42'):
        policy_set.evaluate({})


def test_boolean_rule(tmp_path):
    folder = write_policies(tmp_path / "policies", {"main.rego": "package main\n\ndeny if input.bad\n"})
    policy_set = load_policies(folder, engine="regopy")

    assert policy_set.evaluate({"bad": False}).passed
    assert messages(policy_set.evaluate({"bad": True}).failures) == ["rule deny in package main is true"]


def test_v0_partial_set_form_with_regopy(tmp_path):
    # regopy 1.5.2 accepts the Rego v0 form without `if` and reads it as an object rule.
    folder = write_policies(tmp_path / "policies", {
        "legacy.rego": """
            package legacy

            deny[msg] {
                some name in input.names
                msg := sprintf("%s is not allowed", [name])
            }

            warn[{"msg": msg, "resource": "aws_s3_bucket.logs"}] {
                input.warn
                msg := "structured v0 warning"
            }
        """,
    })
    policy_set = load_policies(folder, engine="regopy")

    clean = policy_set.evaluate({"names": [], "warn": False})
    result = policy_set.evaluate({"names": ["b", "a"], "warn": True})

    assert clean.passed
    assert clean.warnings == []
    assert messages(result.failures) == ["a is not allowed", "b is not allowed"]
    assert result.warnings == [PolicyFinding("legacy", "warn", "structured v0 warning", "aws_s3_bucket.logs")]


def test_prefixed_rule_names_and_packages(tmp_path):
    folder = write_policies(tmp_path / "policies", {
        "aws/s3.rego": """
            package aws.s3

            deny_public_bucket contains "public bucket" if input.public

            warn_untagged contains "untagged" if input.untagged
        """,
        "main.rego": 'package main\n\nviolation contains "main violation" if input.public\n',
    })
    policy_set = load_policies(folder, engine="regopy")

    result = policy_set.evaluate({"public": True, "untagged": True})

    assert result.rules_evaluated == 3
    assert result.failures == [
        PolicyFinding("aws.s3", "deny_public_bucket", "public bucket", None),
        PolicyFinding("main", "violation", "main violation", None),
    ]
    assert result.warnings == [PolicyFinding("aws.s3", "warn_untagged", "untagged", None)]


def test_rule_defined_in_two_files_counts_once(tmp_path):
    folder = write_policies(tmp_path / "policies", {
        "one.rego": 'package main\n\ndeny contains "one" if true\n',
        "two.rego": 'package main\n\ndeny contains "two" if true\n',
    })

    result = load_policies(folder, engine="regopy").evaluate({})

    assert result.rules_evaluated == 1
    assert messages(result.failures) == ["one", "two"]


def test_helper_package_is_imported(tmp_path):
    folder = write_policies(tmp_path / "policies", {
        "lib/names.rego": 'package lib.names\n\nforbidden := {"root"}\n',
        "main.rego": """
            package main

            import data.lib.names

            deny contains sprintf("user %s is forbidden", [user]) if {
                some user in input.users
                user in names.forbidden
            }
        """,
    })

    result = load_policies(folder, engine="regopy").evaluate({"users": ["root", "ci"]})

    assert result.rules_evaluated == 1
    assert messages(result.failures) == ["user root is forbidden"]


def test_strings_with_quotes_and_backslashes(tmp_path):
    # regopy mangles such strings unless they reach it JSON-escaped.
    folder = write_policies(tmp_path / "policies", {
        "main.rego": r"""
            package main

            deny contains {"msg": sprintf("%s: %s", [change.address, document.Note]), "resource": change.address} if {
                some change in input.resource_changes
                document := json.unmarshal(change.change.after.policy)
                change.address == "aws_iam_policy.this[\"a\\\\b\"]"
            }

            warn contains "tab\tand \"quote\"" if true
        """,
    })
    address = 'aws_iam_policy.this["a\\\\b"]'
    plan = {"resource_changes": [{"address": address, "change": {"after": {"policy": json.dumps({"Note": 'say "hi"\nnew line é'})}}}]}

    result = load_policies(folder, engine="regopy").evaluate(plan)

    assert result.failures == [PolicyFinding("main", "deny", f'{address}: say "hi"\nnew line é', address)]
    assert messages(result.warnings) == ['tab\tand "quote"']


def test_json_unicode_escapes_reach_json_unmarshal(tmp_path):
    # Terraform's jsonencode writes & as \u0026, which regopy's json.unmarshal rejects on its own.
    folder = write_policies(tmp_path / "policies", {
        "main.rego": """
            package main

            deny contains sprintf("team %s", [document.Condition.StringEquals.Team]) if {
                document := json.unmarshal(input.policy)
            }
        """,
    })
    policy = '{"Condition":{"StringEquals":{"Team":"R\\u0026D \\u003cops\\u003e"}}}'

    result = load_policies(folder, engine="regopy").evaluate({"policy": policy})

    assert messages(result.failures) == ["team R&D <ops>"]


def test_decode_unicode_escapes_keeps_json_value():
    assert decode_unicode_escapes('{"a": "R\\u0026D"}') == '{"a": "R&D"}'
    assert decode_unicode_escapes('["\\u00e9", "\\u000a", "\\u0022", "\\ud83d\\ude00"]') == '["é", "\\u000a", "\\u0022", "\\ud83d\\ude00"]'
    # An escaped backslash followed by "u0026" is text, not an escape.
    assert decode_unicode_escapes('{"a": "\\\\u0026"}') == '{"a": "\\\\u0026"}'
    # Strings that are not JSON documents keep their text.
    assert decode_unicode_escapes("C:\\u0026") == "C:\\u0026"
    assert decode_unicode_escapes("{not json \\u0026") == "{not json \\u0026"


def test_regopy_sprintf_differences_from_opa(tmp_path):
    # Found by testing regopy 1.5.2; OPA gives "\"a\"", "[1, 2]", "    a|" and "a and %!s(MISSING)".
    # The shipped policies use only %s with strings and %d with integers for that reason.
    folder = write_policies(tmp_path / "policies", {
        "main.rego": """
            package main

            warn contains sprintf("q=%q", ["a"]) if true

            warn contains sprintf("s=%s", [[1, 2]]) if true

            warn contains sprintf("width=%5s|", ["a"]) if true

            warn contains sprintf("%s and %s", ["a"]) if true
        """,
    })

    result = load_policies(folder, engine="regopy").evaluate({})

    assert messages(result.warnings) == ["q=%q", "s=", "width=a|"]


def test_upper_of_escaped_string_raises_not_passes(tmp_path):
    # regopy changes the case of the escapes too ("\n" becomes "\N"), which breaks its output.
    folder = write_policies(tmp_path / "policies", {"main.rego": 'package main\n\ndeny contains upper(input.address) if true\n'})
    policy_set = load_policies(folder, engine="regopy")

    assert messages(policy_set.evaluate({"address": "aws_s3_bucket.logs"}).failures) == ["AWS_S3_BUCKET.LOGS"]
    with pytest.raises(PolicyEngineError, match="not valid JSON"):
        policy_set.evaluate({"address": 'aws_s3_bucket.this["logs"]\n'})


def test_indented_rule_heads_are_found(tmp_path):
    folder = write_policies(tmp_path / "policies", {
        "main.rego": 'package main\n\n  deny contains "indented" if input.x\n\nwarn contains msg if {\n    deny[msg]\n}\n',
    })

    result = load_policies(folder, engine="regopy").evaluate({"x": True})

    assert result.rules_evaluated == 2
    assert messages(result.failures) == ["indented"]
    assert messages(result.warnings) == ["indented"]


def test_evaluate_from_several_threads(shipped_policies):
    inputs = []
    for name in PLAN_NAMES:
        plan = load_plan(name)
        # Each plan fails one rule with a message of its own, so mixed-up inputs would show.
        plan["resource_changes"][0]["change"]["after"]["tags_all"] = {}
        plan["resource_changes"][0]["change"]["after"]["tags"] = {}
        inputs.append(policy_input(name, plan))
    expected = [shipped_policies.evaluate(document) for document in inputs]

    mismatches = []

    def evaluate_repeatedly(offset: int) -> None:
        for round_number in range(10):
            index = (offset + round_number) % len(inputs)
            result = shipped_policies.evaluate(inputs[index])
            if (result.failures, result.warnings) != (expected[index].failures, expected[index].warnings):
                mismatches.append((offset, index))

    threads = [threading.Thread(target=evaluate_repeatedly, args=(offset,)) for offset in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert all(not result.passed for result in expected)
    assert mismatches == []


# --- engine: errors never pass --------------------------------------------------------------


def test_parse_error_names_file_and_line(tmp_path):
    folder = write_policies(tmp_path / "policies", {
        "good.rego": 'package main\n\ndeny contains "x" if false\n',
        "broken.rego": "package main\n\ndeny contains msg if {\n    msg := \n}\n",
    })

    with pytest.raises(PolicyEngineError) as raised:
        load_policies(folder, engine="regopy")

    assert f"{folder / 'broken.rego'}:4:9" in str(raised.value)
    assert "invalid Rego" in str(raised.value)
    assert isinstance(raised.value, OrchestratorError)


def test_unclosed_brace_names_file_and_line(tmp_path):
    folder = write_policies(tmp_path / "policies", {"unclosed.rego": 'package main\n\ndeny contains "x" if {\n    true\n'})

    with pytest.raises(PolicyEngineError, match=r"unclosed\.rego:3:\d+"):
        load_policies(folder, engine="regopy")


def test_some_key_value_in_comprehension_is_rejected_by_regopy(tmp_path):
    # A regopy 1.5.2 limit that OPA does not have; the shipped policies avoid the form.
    folder = write_policies(tmp_path / "policies", {
        "main.rego": 'package main\n\ndeny contains "x" if {\n    odd := [v | some i, v in input.values; i % 2 == 1]\n    count(odd) > 0\n}\n',
    })

    with pytest.raises(PolicyEngineError, match=r"main\.rego:4:\d+: Invalid collection"):
        load_policies(folder, engine="regopy")


def test_missing_function_raises_at_evaluation(tmp_path):
    folder = write_policies(tmp_path / "policies", {
        "main.rego": 'package main\n\ndeny contains msg if {\n    msg := no_such_function(input.x)\n}\n\nwarn contains "fine" if true\n',
    })
    policy_set = load_policies(folder, engine="regopy")

    with pytest.raises(PolicyEngineError) as raised:
        policy_set.evaluate({"x": 1})

    assert 'failed in data["main"]["deny"]' in str(raised.value)
    assert "Function not found: no_such_function" in str(raised.value)


def test_conflicting_values_raise(tmp_path):
    folder = write_policies(tmp_path / "policies", {
        "main.rego": 'package main\n\ndeny := "first" if input.x\n\ndeny := "second" if input.x\n',
    })
    policy_set = load_policies(folder, engine="regopy")

    assert policy_set.evaluate({"x": False}).passed
    with pytest.raises(PolicyEngineError, match=r'failed in data\["main"\]\["deny"\]: regopy reported an error without details'):
        policy_set.evaluate({"x": True})


def test_input_that_is_not_json_raises(tmp_path):
    folder = write_policies(tmp_path / "policies", {"main.rego": 'package main\n\ndeny contains "x" if false\n'})
    policy_set = load_policies(folder, engine="regopy")

    with pytest.raises(PolicyEngineError, match="not a JSON document: a value of type \\w*Path has no JSON form"):
        policy_set.evaluate({"path": Path("/tmp")})


def test_empty_folder_raises(tmp_path):
    folder = tmp_path / "policies"
    folder.mkdir()

    with pytest.raises(PolicyEngineError, match="no .rego file found under"):
        load_policies(folder, engine="regopy")


def test_missing_folder_raises(tmp_path):
    with pytest.raises(PolicyEngineError, match="policy folder .* not found"):
        load_policies(tmp_path / "nothing-here", engine="regopy")


def test_helper_files_only_raise(tmp_path):
    folder = write_policies(tmp_path / "policies", {"lib/helpers.rego": 'package lib.helpers\n\nis_prod if input.orchestrator.environment == "prod"\n'})

    with pytest.raises(PolicyEngineError, match=r"no deny, violation or warn rule found in the 1 \.rego file\(s\)"):
        load_policies(folder, engine="regopy")


def test_misnamed_rules_raise(tmp_path):
    folder = write_policies(tmp_path / "policies", {
        "main.rego": """
            package main

            denied contains "x" if true

            forbid contains "y" if true

            deny_reason(name) := sprintf("%s is denied", [name])

            warning contains "z" if true
        """,
    })

    with pytest.raises(PolicyEngineError, match="no deny, violation or warn rule found"):
        load_policies(folder, engine="regopy")


def test_opa_unit_test_files_are_not_policies(tmp_path):
    folder = write_policies(tmp_path / "policies", {"main_test.rego": 'package main_test\n\ntest_nothing if true\n\ndeny contains "x" if true\n'})

    with pytest.raises(PolicyEngineError, match="no .rego file found"):
        load_policies(folder, engine="regopy")


def test_unknown_engine_name_raises(tmp_path):
    folder = write_policies(tmp_path / "policies", {"main.rego": 'package main\n\ndeny contains "x" if false\n'})

    with pytest.raises(ValueError, match="unknown policy engine 'rego'"):
        load_policies(folder, engine="rego")


def test_auto_engine_without_opa_uses_regopy(tmp_path, no_opa_on_path):
    folder = write_policies(tmp_path / "policies", {"main.rego": 'package main\n\ndeny contains "x" if false\n'})

    assert load_policies(folder).engine.startswith("regopy ")


def test_opa_engine_without_binary_raises(tmp_path, no_opa_on_path):
    folder = write_policies(tmp_path / "policies", {"main.rego": 'package main\n\ndeny contains "x" if false\n'})

    with pytest.raises(PolicyEngineError, match="no opa binary is on PATH"):
        load_policies(folder, engine="opa")


# --- shipped policies: the example plans comply ------------------------------------------------


@pytest.mark.parametrize("name", PLAN_NAMES)
def test_example_plan_passes_shipped_policies(shipped_policies, name):
    plan = load_plan(name)

    result = shipped_policies.evaluate(policy_input(name, plan))

    assert result.failures == []
    assert result.warnings == []
    assert result.passed
    assert result.rules_evaluated == SHIPPED_RULE_COUNT


def test_example_plans_pass_as_prod(shipped_policies):
    # The prod-only rules must hold for the staging and shared plans too.
    for name in PLAN_NAMES:
        result = shipped_policies.evaluate(policy_input(name, load_plan(name), environment="prod"))

        assert result.failures == [], name


def test_missing_metadata_fails(shipped_policies):
    result = shipped_policies.evaluate(load_plan("prod--payments--kms"))

    assert result.failures == [
        PolicyFinding(
            "orchestrator.metadata",
            "deny",
            "the policy input has no orchestrator.environment: evaluate plans with build_policy_input so that environment-specific rules apply",
            None,
        )
    ]


def test_shipped_policies_avoid_regopy_differences():
    # See test_regopy_sprintf_differences_from_opa and test_upper_of_escaped_string_raises_not_passes.
    for path in sorted(SHIPPED_POLICIES.rglob("*.rego")):
        source = path.read_text()
        verbs = set(re.findall(r"%[^sd%\s\"]", source))

        assert verbs == set(), f"{path.name} uses sprintf verbs {verbs}, which regopy formats differently from OPA"
        assert "upper(" not in source and "lower(" not in source, path.name
        assert re.search(r"\|[^\]]*some \w+, \w+ in", source) is None, f"{path.name} uses `some k, v in` inside a comprehension"


# --- shipped policies: S3 encryption -----------------------------------------------------------


def test_bucket_without_encryption_fails(shipped_policies):
    plan = without_resource(load_plan("prod--payments--s3"), 'aws_s3_bucket_server_side_encryption_configuration.this["ledger"]')

    result = shipped_policies.evaluate(policy_input("prod--payments--s3", plan))

    assert result.failures == [
        PolicyFinding(
            "aws.s3.encryption",
            "deny",
            'aws_s3_bucket.this["ledger"] has no server-side encryption: add an aws_s3_bucket_server_side_encryption_configuration '
            "whose bucket argument refers to this bucket (SSE-KMS with a customer managed key for confidential data)",
            'aws_s3_bucket.this["ledger"]',
        )
    ]


def test_encryption_being_deleted_fails(shipped_policies):
    plan = load_plan("staging--payments--s3")
    encryption = resource_change(plan, 'aws_s3_bucket_server_side_encryption_configuration.this["ledger"]')
    encryption["change"].update(actions=["delete"], before=encryption["change"]["after"], after=None, after_unknown={})

    result = shipped_policies.evaluate(policy_input("staging--payments--s3", plan))

    assert [finding.resource for finding in result.failures] == ['aws_s3_bucket.this["ledger"]']
    assert result.failures[0].package == "aws.s3.encryption"


def test_encryption_of_other_instance_key_fails(shipped_policies):
    # The configuration refers to aws_s3_bucket.this with each.key, so only the same key counts.
    plan = load_plan("staging--payments--s3")
    encryption = resource_change(plan, 'aws_s3_bucket_server_side_encryption_configuration.this["ledger"]')
    encryption["index"] = "archive"
    encryption["address"] = 'aws_s3_bucket_server_side_encryption_configuration.this["archive"]'

    result = shipped_policies.evaluate(policy_input("staging--payments--s3", plan))

    assert [finding.resource for finding in result.failures] == ['aws_s3_bucket.this["ledger"]']


def test_encryption_matched_by_exact_instance_reference(shipped_policies):
    plan = load_plan("staging--payments--s3")
    encryption = resource_change(plan, 'aws_s3_bucket_server_side_encryption_configuration.this["ledger"]')
    encryption["index"] = "other-key"
    configuration = next(
        resource for resource in plan["configuration"]["root_module"]["resources"]
        if resource["address"] == "aws_s3_bucket_server_side_encryption_configuration.this"
    )
    configuration["expressions"]["bucket"]["references"] = ['aws_s3_bucket.this["ledger"].id', 'aws_s3_bucket.this["ledger"]', "aws_s3_bucket.this"]

    result = shipped_policies.evaluate(policy_input("staging--payments--s3", plan))

    assert result.failures == []


def test_encryption_matched_by_known_bucket_name(shipped_policies):
    plan = load_plan("staging--payments--s3")
    bucket_name = resource_change(plan, 'aws_s3_bucket.this["ledger"]')["change"]["after"]["bucket"]
    encryption = resource_change(plan, 'aws_s3_bucket_server_side_encryption_configuration.this["ledger"]')
    encryption["index"] = "other-key"
    encryption["change"]["after"]["bucket"] = bucket_name
    encryption["change"]["after_unknown"].pop("bucket")
    for resource in plan["configuration"]["root_module"]["resources"]:
        if resource["address"] == "aws_s3_bucket_server_side_encryption_configuration.this":
            resource["expressions"]["bucket"] = {"constant_value": bucket_name}

    result = shipped_policies.evaluate(policy_input("staging--payments--s3", plan))

    assert result.failures == []


def test_encryption_of_bucket_in_child_module(shipped_policies):
    plan = load_plan("staging--payments--s3")
    for change in plan["resource_changes"]:
        change["module_address"] = 'module.storage["eu"]'
        change["address"] = f'module.storage["eu"].{change["address"]}'
    root = plan["configuration"]["root_module"]
    plan["configuration"]["root_module"] = {"module_calls": {"storage": {"source": "./storage", "module": root}}}

    passing = shipped_policies.evaluate(policy_input("staging--payments--s3", plan))
    failing = shipped_policies.evaluate(
        policy_input("staging--payments--s3", without_resource(plan, 'module.storage["eu"].aws_s3_bucket_server_side_encryption_configuration.this["ledger"]'))
    )

    assert passing.failures == []
    assert [finding.resource for finding in failing.failures] == ['module.storage["eu"].aws_s3_bucket.this["ledger"]']


def test_inline_encryption_block_counts(shipped_policies):
    plan = without_resource(load_plan("staging--payments--s3"), 'aws_s3_bucket_server_side_encryption_configuration.this["ledger"]')
    bucket = resource_change(plan, 'aws_s3_bucket.this["ledger"]')
    bucket["change"]["after"]["server_side_encryption_configuration"] = [{"rule": [{"apply_server_side_encryption_by_default": [{"sse_algorithm": "AES256"}]}]}]

    result = shipped_policies.evaluate(policy_input("staging--payments--s3", plan))

    assert result.failures == []


# --- shipped policies: S3 public access ------------------------------------------------------


def test_public_access_setting_false_fails(shipped_policies):
    plan = load_plan("prod--payments--s3")
    block = resource_change(plan, 'aws_s3_bucket_public_access_block.this["exports"]')
    block["change"]["after"]["block_public_policy"] = False
    block["change"]["after"]["ignore_public_acls"] = None

    result = shipped_policies.evaluate(policy_input("prod--payments--s3", plan))

    address = 'aws_s3_bucket_public_access_block.this["exports"]'
    assert result.failures == [
        PolicyFinding("aws.s3.public_access", "deny", f"{address} does not set block_public_policy to true: set it to true to block public access to the bucket", address),
        PolicyFinding("aws.s3.public_access", "deny", f"{address} does not set ignore_public_acls to true: set it to true to block public access to the bucket", address),
    ]


def test_public_access_setting_unknown_passes(shipped_policies):
    plan = load_plan("prod--payments--s3")
    block = resource_change(plan, 'aws_s3_bucket_public_access_block.this["exports"]')
    del block["change"]["after"]["restrict_public_buckets"]
    block["change"]["after_unknown"]["restrict_public_buckets"] = True

    result = shipped_policies.evaluate(policy_input("prod--payments--s3", plan))

    assert result.failures == []


def test_bucket_without_public_access_block_fails(shipped_policies):
    plan = without_resource(load_plan("prod--payments--s3"), 'aws_s3_bucket_public_access_block.this["exports"]')

    result = shipped_policies.evaluate(policy_input("prod--payments--s3", plan))

    assert result.failures == [
        PolicyFinding(
            "aws.s3.public_access",
            "deny",
            'aws_s3_bucket.this["exports"] has no public access block: add an aws_s3_bucket_public_access_block '
            "whose bucket argument refers to this bucket, with all four settings true",
            'aws_s3_bucket.this["exports"]',
        )
    ]


# --- shipped policies: KMS ---------------------------------------------------------------------


def test_key_rotation_disabled_fails(shipped_policies):
    plan = load_plan("staging--payments--kms")
    resource_change(plan, 'aws_kms_key.this["data"]')["change"]["after"]["enable_key_rotation"] = False

    result = shipped_policies.evaluate(policy_input("staging--payments--kms", plan))

    assert result.failures == [
        PolicyFinding("aws.kms.rotation", "deny", 'aws_kms_key.this["data"] has key rotation disabled: set enable_key_rotation = true', 'aws_kms_key.this["data"]')
    ]


def test_key_rotation_unknown_passes(shipped_policies):
    plan = load_plan("staging--payments--kms")
    key = resource_change(plan, 'aws_kms_key.this["data"]')
    del key["change"]["after"]["enable_key_rotation"]
    key["change"]["after_unknown"]["enable_key_rotation"] = True

    assert shipped_policies.evaluate(policy_input("staging--payments--kms", plan)).failures == []


def test_key_rotation_of_asymmetric_key_not_checked(shipped_policies):
    plan = load_plan("staging--payments--kms")
    key = resource_change(plan, 'aws_kms_key.this["data"]')
    key["change"]["after"].update(enable_key_rotation=False, customer_master_key_spec="RSA_2048", key_usage="SIGN_VERIFY")

    assert shipped_policies.evaluate(policy_input("staging--payments--kms", plan)).failures == []


def deleted_key_plan(actions: list[str]) -> dict:
    """Return the prod KMS plan with its key deleted (or replaced), as Terraform plans it."""
    plan = load_plan("prod--payments--kms")
    key = resource_change(plan, 'aws_kms_key.this["data"]')
    before = dict(key["change"]["after"], key_id="6019d347-a1bb-4bdf-8b73-0c1631ea2541", arn="arn:aws:kms:eu-west-1:333333333333:key/6019d347-a1bb-4bdf-8b73-0c1631ea2541")
    if actions == ["delete"]:
        key["change"].update(actions=actions, before=before, after=None, after_unknown={}, after_sensitive=False)
    else:
        key["change"].update(actions=actions, before=before)
        key["action_reason"] = "replace_because_cannot_update"
    return plan


def test_key_deletion_in_prod_fails(shipped_policies):
    result = shipped_policies.evaluate(policy_input("prod--payments--kms", deleted_key_plan(["delete"])))

    assert result.failures == [
        PolicyFinding(
            "aws.kms.deletion",
            "deny",
            'aws_kms_key.this["data"] (key 6019d347-a1bb-4bdf-8b73-0c1631ea2541) would be deleted in prod: '
            "keep the key in the configuration and protect it with lifecycle { prevent_destroy = true }",
            'aws_kms_key.this["data"]',
        )
    ]


def test_key_replacement_in_prod_fails(shipped_policies):
    for actions in (["delete", "create"], ["create", "delete"]):
        result = shipped_policies.evaluate(policy_input("prod--payments--kms", deleted_key_plan(actions)))

        assert messages(result.failures) == [
            'aws_kms_key.this["data"] (key 6019d347-a1bb-4bdf-8b73-0c1631ea2541) would be replaced in prod: '
            "keep the key in the configuration and protect it with lifecycle { prevent_destroy = true }"
        ], actions


def test_key_deletion_without_key_id_names_address(shipped_policies):
    plan = deleted_key_plan(["delete"])
    del resource_change(plan, 'aws_kms_key.this["data"]')["change"]["before"]["key_id"]

    result = shipped_policies.evaluate(policy_input("prod--payments--kms", plan))

    assert messages(result.failures) == [
        'aws_kms_key.this["data"] would be deleted in prod: keep the key in the configuration and protect it with lifecycle { prevent_destroy = true }'
    ]


def test_key_deletion_outside_prod_passes(shipped_policies):
    result = shipped_policies.evaluate(policy_input("prod--payments--kms", deleted_key_plan(["delete"]), environment="staging"))

    assert result.failures == []


# --- shipped policies: IAM wildcards in prod ---------------------------------------------------


def iam_plan_with_policy(document: dict) -> dict:
    plan = load_plan("prod--orders-api--iam")
    resource_change(plan, 'aws_iam_role_policy.this["orders-api/orders-api"]')["change"]["after"]["policy"] = json.dumps(document)
    return plan


def test_wildcard_statement_in_prod_fails(shipped_policies):
    plan = iam_plan_with_policy({
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "ReadLedger", "Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"},
            {"Sid": "Admin", "Effect": "Allow", "Action": ["s3:GetObject", "*"], "Resource": "*"},
            {"Effect": "Allow", "Action": "*", "Resource": ["arn:aws:s3:::a", "*"]},
            {"Effect": "Deny", "Action": "*", "Resource": "*"},
        ],
    })

    result = shipped_policies.evaluate(policy_input("prod--orders-api--iam", plan))

    address = 'aws_iam_role_policy.this["orders-api/orders-api"]'
    assert result.failures == [
        PolicyFinding(
            "aws.iam.wildcard",
            "deny",
            f'{address} allows Action "*" on Resource "*" in Statement[2]: prod forbids full administrator access, so list the actions and resources that are needed',
            address,
        ),
        PolicyFinding(
            "aws.iam.wildcard",
            "deny",
            f'{address} allows Action "*" on Resource "*" in the statement with Sid Admin: prod forbids full administrator access, so list the actions and resources that are needed',
            address,
        ),
    ]


def test_wildcard_single_statement_object_fails(shipped_policies):
    plan = iam_plan_with_policy({"Version": "2012-10-17", "Statement": {"Effect": "Allow", "Action": "*", "Resource": "*"}})

    result = shipped_policies.evaluate(policy_input("prod--orders-api--iam", plan))

    assert [finding.package for finding in result.failures] == ["aws.iam.wildcard"]
    assert "in Statement[0]:" in result.failures[0].message


def test_wildcard_in_role_inline_policy_fails(shipped_policies):
    plan = load_plan("prod--orders-api--iam")
    role = resource_change(plan, 'aws_iam_role.this["orders-api"]')
    role["change"]["after_unknown"].pop("inline_policy")
    role["change"]["after"]["inline_policy"] = [{"name": "admin", "policy": json.dumps({"Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]})}]

    result = shipped_policies.evaluate(policy_input("prod--orders-api--iam", plan))

    assert [finding.resource for finding in result.failures] == ['aws_iam_role.this["orders-api"]']


def test_wildcard_statement_outside_prod_passes(shipped_policies):
    plan = iam_plan_with_policy({"Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]})

    result = shipped_policies.evaluate(policy_input("prod--orders-api--iam", plan, environment="staging"))

    assert result.failures == []


def test_unknown_policy_in_prod_warns(shipped_policies):
    plan = load_plan("prod--orders-api--iam")
    change = resource_change(plan, 'aws_iam_role_policy.this["orders-api/orders-api"]')
    del change["change"]["after"]["policy"]
    change["change"]["after_unknown"]["policy"] = True

    result = shipped_policies.evaluate(policy_input("prod--orders-api--iam", plan))

    assert result.passed
    assert result.warnings == [
        PolicyFinding(
            "aws.iam.wildcard",
            "warn",
            'aws_iam_role_policy.this["orders-api/orders-api"] has a policy that is unknown until apply, so it was not checked for Action "*" on Resource "*"',
            'aws_iam_role_policy.this["orders-api/orders-api"]',
        )
    ]


# --- shipped policies: required tags -----------------------------------------------------------


def test_missing_owner_tag_fails(shipped_policies):
    plan = load_plan("prod--orders-api--lambda")
    after = resource_change(plan, 'aws_lambda_function.this["api"]')["change"]["after"]
    del after["tags"]["Owner"]
    del after["tags_all"]["Owner"]

    result = shipped_policies.evaluate(policy_input("prod--orders-api--lambda", plan))

    assert result.failures == [
        PolicyFinding(
            "tagging.required",
            "deny",
            'aws_lambda_function.this["api"] is missing the required tag Owner: add it to the resource\'s tags or to the provider\'s default_tags',
            'aws_lambda_function.this["api"]',
        )
    ]


def test_empty_cost_centre_tag_fails(shipped_policies):
    plan = load_plan("prod--payments--kms")
    after = resource_change(plan, 'aws_kms_key.this["data"]')["change"]["after"]
    after["tags"]["CostCentre"] = " "
    after["tags_all"]["CostCentre"] = " "

    result = shipped_policies.evaluate(policy_input("prod--payments--kms", plan))

    assert messages(result.failures) == [
        'aws_kms_key.this["data"] is missing the required tag CostCentre: add it to the resource\'s tags or to the provider\'s default_tags'
    ]


def test_null_tags_fail(shipped_policies):
    plan = load_plan("prod--orders-api--lambda")
    after = resource_change(plan, 'aws_lambda_function.this["api"]')["change"]["after"]
    after["tags"] = None
    after["tags_all"] = None

    result = shipped_policies.evaluate(policy_input("prod--orders-api--lambda", plan))

    assert messages(result.failures) == [
        'aws_lambda_function.this["api"] is missing the required tag CostCentre: add it to the resource\'s tags or to the provider\'s default_tags',
        'aws_lambda_function.this["api"] is missing the required tag Owner: add it to the resource\'s tags or to the provider\'s default_tags',
    ]


def test_tag_from_default_tags_passes(shipped_policies):
    plan = load_plan("prod--orders-api--lambda")
    after = resource_change(plan, 'aws_lambda_function.this["api"]')["change"]["after"]
    del after["tags"]["Owner"]

    assert shipped_policies.evaluate(policy_input("prod--orders-api--lambda", plan)).failures == []


def test_unknown_tags_pass(shipped_policies):
    plan = load_plan("prod--payments--s3")
    bucket = resource_change(plan, 'aws_s3_bucket.this["ledger"]')
    del bucket["change"]["after"]["tags"]
    del bucket["change"]["after"]["tags_all"]
    bucket["change"]["after_unknown"].update(tags=True, tags_all=True)

    assert shipped_policies.evaluate(policy_input("prod--payments--s3", plan)).failures == []


def test_unknown_tags_all_with_known_tags_passes(shipped_policies):
    # default_tags may still add the tag, and tags_all is unknown.
    plan = load_plan("prod--payments--s3")
    bucket = resource_change(plan, 'aws_s3_bucket.this["ledger"]')
    del bucket["change"]["after"]["tags_all"]
    del bucket["change"]["after"]["tags"]["Owner"]
    bucket["change"]["after_unknown"]["tags_all"] = True

    assert shipped_policies.evaluate(policy_input("prod--payments--s3", plan)).failures == []


def test_unknown_tag_value_passes(shipped_policies):
    plan = load_plan("prod--payments--s3")
    bucket = resource_change(plan, 'aws_s3_bucket.this["ledger"]')
    del bucket["change"]["after"]["tags"]["Owner"]
    del bucket["change"]["after"]["tags_all"]["Owner"]
    bucket["change"]["after_unknown"]["tags"] = {"Owner": True}
    bucket["change"]["after_unknown"]["tags_all"] = {"Owner": True}

    assert shipped_policies.evaluate(policy_input("prod--payments--s3", plan)).failures == []


def test_unchanged_resource_tags_not_checked(shipped_policies):
    plan = load_plan("prod--orders-api--lambda")
    change = resource_change(plan, 'aws_lambda_function.this["api"]')
    del change["change"]["after"]["tags"]["Owner"]
    del change["change"]["after"]["tags_all"]["Owner"]
    change["change"]["actions"] = ["no-op"]
    change["change"]["before"] = change["change"]["after"]

    assert shipped_policies.evaluate(policy_input("prod--orders-api--lambda", plan)).failures == []


# --- opa engine ----------------------------------------------------------------------------------


@requires_opa
@pytest.mark.parametrize("name", PLAN_NAMES)
def test_example_plan_passes_with_opa(name):
    plan = load_plan(name)

    result = load_policies(SHIPPED_POLICIES, engine="opa").evaluate(policy_input(name, plan))

    assert result.engine.startswith("opa ")
    assert result.failures == []
    assert result.warnings == []
    assert result.rules_evaluated == SHIPPED_RULE_COUNT


@requires_opa
def test_opa_and_regopy_give_same_messages(shipped_policies):
    opa_policies = load_policies(SHIPPED_POLICIES, engine="opa")
    failing_inputs = [
        policy_input("prod--payments--s3", without_resource(load_plan("prod--payments--s3"), 'aws_s3_bucket_server_side_encryption_configuration.this["ledger"]')),
        policy_input("prod--payments--kms", deleted_key_plan(["delete", "create"])),
        policy_input("prod--orders-api--iam", iam_plan_with_policy({"Statement": [{"Sid": "Admin", "Effect": "Allow", "Action": "*", "Resource": "*"}]})),
        load_plan("prod--payments--kms"),
    ]

    for document in failing_inputs:
        regopy_result = shipped_policies.evaluate(document)
        opa_result = opa_policies.evaluate(document)

        assert opa_result.failures == regopy_result.failures
        assert opa_result.warnings == regopy_result.warnings
        assert regopy_result.failures != []


@requires_opa
def test_opa_parse_error_names_file_and_line(tmp_path):
    folder = write_policies(tmp_path / "policies", {"broken.rego": "package main\n\ndeny contains msg if {\n    msg := \n}\n"})

    with pytest.raises(PolicyEngineError, match=r"broken\.rego:\d+:\d+"):
        load_policies(folder, engine="opa")


@requires_opa
def test_opa_rejects_v0_form(tmp_path):
    # OPA 1.x parses Rego v1 only, where `deny[msg] {` lacks the required `if`.
    folder = write_policies(tmp_path / "policies", {"legacy.rego": 'package main\n\ndeny[msg] {\n    msg := "x"\n}\n'})

    with pytest.raises(PolicyEngineError, match=r"legacy\.rego:3"):
        load_policies(folder, engine="opa")


# A stand-in for the opa binary: it replies with the JSON that OPA documents for
# `opa version`, `opa check --format json` and `opa eval --format json`, and records
# each call. It checks how the engine calls opa and reads its output, not OPA's semantics.
STAND_IN_OPA = '''\
import json, os, sys
from pathlib import Path

folder = Path(__file__).parent
calls = folder / "calls.jsonl"
with calls.open("a") as log:
    log.write(json.dumps({"argv": sys.argv[1:], "stdin": sys.stdin.read() if sys.argv[1] == "eval" else None}) + "\\n")

reply = json.loads((folder / "replies.json").read_text())[sys.argv[1]]
sys.stdout.write(reply["stdout"])
sys.exit(reply["exit_status"])
'''


@pytest.fixture
def stand_in_opa(tmp_path, monkeypatch):
    """Put a stand-in ``opa`` on PATH and return a function that sets its replies and reads its calls."""
    folder = tmp_path / "stand-in-bin"
    folder.mkdir()
    (folder / "stand_in_opa.py").write_text(STAND_IN_OPA)
    launcher = folder / "opa"
    launcher.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{folder / "stand_in_opa.py"}" "$@"\n')
    launcher.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")

    def configure(eval_output: dict | None = None, check_output: dict | None = None) -> Path:
        replies = {
            "version": {"stdout": "Version: 1.4.2\nBuild Commit: stand-in\n", "exit_status": 0},
            "check": {"stdout": json.dumps(check_output) if check_output else "", "exit_status": 1 if check_output else 0},
            "eval": {"stdout": json.dumps(eval_output or {}), "exit_status": 1 if eval_output and "errors" in eval_output else 0},
        }
        (folder / "replies.json").write_text(json.dumps(replies))
        return folder / "calls.jsonl"

    return configure


def test_opa_stand_in_command_line(tmp_path, stand_in_opa):
    folder = write_policies(tmp_path / "policies", {
        "main.rego": 'package main\n\ndeny contains "x" if input.x\n',
        "aws/s3.rego": 'package aws.s3\n\nwarn contains "y" if input.y\n',
    })
    calls_file = stand_in_opa(eval_output={
        "result": [{
            "expressions": [{"value": True, "text": "result := [...]", "location": {"row": 1, "col": 1}}],
            "bindings": {"result": [[[{"msg": "public bucket", "resource": "aws_s3_bucket.logs"}]], [["denied"]]]},
        }]
    })

    policy_set = load_policies(folder)
    result = policy_set.evaluate({"x": True, "note": 'quoted "text"'})

    calls = [json.loads(line) for line in calls_file.read_text().splitlines()]
    eval_call = calls[-1]
    assert policy_set.engine == "opa 1.4.2"
    assert [call["argv"][0] for call in calls] == ["version", "check", "eval"]
    assert calls[1]["argv"] == ["check", "--format", "json", str(folder / "aws" / "s3.rego"), str(folder / "main.rego")]
    assert eval_call["argv"][:4] == ["eval", "--format", "json", "--stdin-input"]
    assert eval_call["argv"][4:8] == ["--data", str(folder / "aws" / "s3.rego"), "--data", str(folder / "main.rego")]
    assert eval_call["argv"][8] == 'result := [[value | value := data["aws"]["s3"]["warn"]], [value | value := data["main"]["deny"]]]'
    assert json.loads(eval_call["stdin"]) == {"x": True, "note": 'quoted "text"'}
    assert result.failures == [PolicyFinding("main", "deny", "denied", None)]
    assert result.warnings == [PolicyFinding("aws.s3", "warn", "public bucket", "aws_s3_bucket.logs")]
    assert result.engine == "opa 1.4.2"


def test_opa_stand_in_check_errors(tmp_path, stand_in_opa):
    folder = write_policies(tmp_path / "policies", {"main.rego": 'package main\n\ndeny contains "x" if input.x\n'})
    stand_in_opa(check_output={
        "errors": [{"message": "unexpected assign token", "code": "rego_parse_error", "location": {"file": str(folder / "main.rego"), "row": 3, "col": 9}}]
    })

    with pytest.raises(PolicyEngineError, match=f"invalid Rego: {folder / 'main.rego'}:3:9: unexpected assign token \\(rego_parse_error\\)"):
        load_policies(folder, engine="opa")


def test_opa_stand_in_eval_errors(tmp_path, stand_in_opa):
    folder = write_policies(tmp_path / "policies", {"main.rego": 'package main\n\ndeny := "a" if input.x\n'})
    stand_in_opa(eval_output={
        "errors": [{"message": "complete rules must not produce multiple outputs", "code": "eval_conflict_error", "location": {"file": str(folder / "main.rego"), "row": 3, "col": 1}}]
    })
    policy_set = load_policies(folder, engine="opa")

    with pytest.raises(PolicyEngineError, match="policy evaluation failed: .*main.rego:3:1: complete rules must not produce multiple outputs"):
        policy_set.evaluate({"x": True})


def test_opa_stand_in_garbled_output(tmp_path, stand_in_opa):
    folder = write_policies(tmp_path / "policies", {"main.rego": 'package main\n\ndeny contains "x" if input.x\n'})
    stand_in_opa(eval_output={"result": []})
    policy_set = load_policies(folder, engine="opa")

    with pytest.raises(PolicyEngineError, match="opa eval returned no result"):
        policy_set.evaluate({"x": True})


def test_opa_stand_in_wrong_result_shape(tmp_path, stand_in_opa):
    folder = write_policies(tmp_path / "policies", {"main.rego": 'package main\n\ndeny contains "x" if input.x\n\nwarn contains "y" if input.y\n'})
    stand_in_opa(eval_output={"result": [{"expressions": [], "bindings": {"result": [["only one rule"]]}}]})
    policy_set = load_policies(folder, engine="opa")

    with pytest.raises(PolicyEngineError, match="expected one array of values per rule"):
        policy_set.evaluate({"x": True})


def test_policy_result_passed():
    finding = PolicyFinding("main", "deny", "x", None)

    assert PolicyResult(failures=[], warnings=[finding], rules_evaluated=1, engine="regopy 1.5.2").passed
    assert not PolicyResult(failures=[finding], warnings=[], rules_evaluated=1, engine="regopy 1.5.2").passed
