"""The redactor: credential formats, secret-like keys, known and plan-sensitive values, multi-line secrets, failure."""

from __future__ import annotations

import copy
import json
import logging
import threading
import time
from pathlib import Path

import pytest

from orchestrator import redaction
from orchestrator.redaction import MASK, WITHHELD, Redactor, is_secret_key, secrets_from_plan

TESTS_DIR = Path(__file__).resolve().parent
# A copy of the shared redaction case, so that generated team repositories can run this test too.
REDACTION_CASE = TESTS_DIR / "data" / "redaction-case"
PLANS_DIR = TESTS_DIR / "data" / "plans"
SENSITIVE_PLAN = TESTS_DIR / "data" / "redaction" / "sensitive-plan.json"


def case_lines(name: str) -> list[str]:
    return [line for line in (REDACTION_CASE / name).read_text(encoding="utf-8").splitlines() if line]


def strings_in(value) -> list[str]:
    """Every string inside a JSON-like value, keys included."""
    if isinstance(value, dict):
        return [text for key, item in value.items() for text in [str(key), *strings_in(item)]]
    if isinstance(value, list):
        return [text for item in value for text in strings_in(item)]
    return [value] if isinstance(value, str) else []


# --- the shared case: Terraform apply output ---------------------------------------------------


def redact_case_by_line(output: str) -> list[str]:
    redactor = Redactor()
    return ["\n".join(redactor.line(line) for line in output.split("\n"))]


def redact_case_as_text(output: str) -> list[str]:
    return [Redactor().text(output)]


def redact_case_as_structure(output: str) -> list[str]:
    redacted = Redactor().structure({"output": output, "nested": [{"error": output}]})
    assert set(redacted) == {"output", "nested"}
    return [redacted["output"], redacted["nested"][0]["error"]]


REDACT_CASE = [redact_case_by_line, redact_case_as_text, redact_case_as_structure]


@pytest.mark.parametrize("redact", REDACT_CASE, ids=["line", "text", "structure"])
def test_case_secrets_are_masked(redact):
    results = redact((REDACTION_CASE / "apply-output.txt").read_text(encoding="utf-8"))
    for result in results:
        for secret in case_lines("must-not-appear.txt"):
            assert secret not in result


@pytest.mark.parametrize("redact", REDACT_CASE, ids=["line", "text", "structure"])
def test_case_ordinary_lines_stay(redact):
    results = redact((REDACTION_CASE / "apply-output.txt").read_text(encoding="utf-8"))
    for result in results:
        for expected_line in case_lines("must-stay.txt"):
            assert expected_line in result


def test_case_structure_has_no_secret_anywhere():
    output = (REDACTION_CASE / "apply-output.txt").read_text(encoding="utf-8")
    redacted = Redactor().structure({"output": output, "nested": [{"error": output}]})
    for text in strings_in(redacted):
        for secret in case_lines("must-not-appear.txt"):
            assert secret not in text


def test_case_line_count_is_kept():
    output = (REDACTION_CASE / "apply-output.txt").read_text(encoding="utf-8")
    assert len(Redactor().text(output).split("\n")) == len(output.split("\n"))


# --- resource addresses are not keys -----------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            "aws_iam_access_key.ci: Creation complete after 1s [id=AKIAIOSFODNN7EXAMPLE]",
            f"aws_iam_access_key.ci: Creation complete after 1s [id={MASK}]",
        ),
        ("aws_iam_access_key.ci: Creating...", "aws_iam_access_key.ci: Creating..."),
        (
            'module.ci.aws_secretsmanager_secret.token["db"]: Modifying... [id=arn:aws:secretsmanager:eu-west-1:111111111111:secret:db-AbCdEf]',
            'module.ci.aws_secretsmanager_secret.token["db"]: Modifying... [id=arn:aws:secretsmanager:eu-west-1:111111111111:secret:db-AbCdEf]',
        ),
        ("data.aws_secretsmanager_secret_version.api_token: Reading...", "data.aws_secretsmanager_secret_version.api_token: Reading..."),
        ("random_password.password: Creation complete after 0s [id=none]", "random_password.password: Creation complete after 0s [id=none]"),
        ("  # aws_iam_access_key.ci will be created", "  # aws_iam_access_key.ci will be created"),
        ('  + resource "aws_iam_access_key" "ci" {', '  + resource "aws_iam_access_key" "ci" {'),
    ],
)
def test_resource_address_line_is_kept(line, expected):
    assert Redactor().line(line) == expected


# --- credential formats ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("Error: AccessDenied for AKIAIOSFODNN7EXAMPLE", f"Error: AccessDenied for {MASK}"),
        ("assumed ASIAIOSFODNN7EXAMPLE until noon", f"assumed {MASK} until noon"),
        (
            "aws_secret_access_key wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            f"aws_secret_access_key {MASK}",
        ),
        ("secret wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY end", f"secret {MASK} end"),
        ("Authorization: Bearer abc.def-ghi_jkl~mno", f"Authorization: Bearer {MASK}"),
        ("sent bearer 0123456789abcdef to the API", f"sent bearer {MASK} to the API"),
        ("Authorization: Basic dXNlcjpwYXNzd29yZA==", f"Authorization: Basic {MASK}"),
        (
            "postgres://app:Qx7-db-pass-91@db.internal.example:5432/app",
            f"postgres://app:{MASK}@db.internal.example:5432/app",
        ),
        ("redis://:cache-pass-77@cache.internal:6379", f"redis://:{MASK}@cache.internal:6379"),
        ("https://deploy:p@ss-w0rd@git.example.invalid/repo.git", f"https://deploy:{MASK}@git.example.invalid/repo.git"),
        ("https://hooks.example.invalid/x?token=abc123&page=2", f"https://hooks.example.invalid/x?token={MASK}&page=2"),
        ("https://blob.example.invalid/f?sv=2022&sig=Zm9vYmFy%3D&se=2030", f"https://blob.example.invalid/f?sv=2022&sig={MASK}&se=2030"),
        ("https://api.example.invalid/cb#access_token=abc123&state=s1", f"https://api.example.invalid/cb#access_token={MASK}&state=s1"),
        ("https://maps.example.invalid/api?key=AB12cd34&zoom=3", f"https://maps.example.invalid/api?key={MASK}&zoom=3"),
        (
            "https://bucket.s3.amazonaws.com/o?X-Amz-Credential=abc%2F2024&X-Amz-Signature=f00d&X-Amz-Expires=60",
            f"https://bucket.s3.amazonaws.com/o?X-Amz-Credential={MASK}&X-Amz-Signature={MASK}&X-Amz-Expires=60",
        ),
        (
            "AccountName=store;AccountKey=bXlLZXk=;EndpointSuffix=core.windows.net",
            f"AccountName=store;AccountKey={MASK};EndpointSuffix=core.windows.net",
        ),
        ("token ghp_ExampleExampleExampleExample0000000 used", f"token {MASK} used"),
        ("gho_ExampleExampleExampleExample0000000", MASK),
        ("ghs_ExampleExampleExampleExample0000000", MASK),
        ("ghu_ExampleExampleExampleExample0000000", MASK),
        ("ghr_ExampleExampleExampleExample0000000", MASK),
        ("github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz0123456789", MASK),
        ("glpat-Example0Example0Example", MASK),
        ("slack xoxb-123456789012-1234567890123-Example0Example0Example", f"slack {MASK}"),
        ("slack xoxp-123456789012-Example0Example0", f"slack {MASK}"),
        ("posted to https://hooks.slack.com/services/T000/B000/XXXXexample", f"posted to https://hooks.slack.com/services/{MASK}"),
        ("charge with sk_live_51Hq2ExampleExampleExample0000", f"charge with {MASK}"),
        ("restricted rk_live_51Hq2ExampleExample0000", f"restricted {MASK}"),
        ("webhook whsec_Example0Example0Example0Example", f"webhook {MASK}"),
        (
            "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJleGFtcGxlIn0.c2lnbmF0dXJlLWV4YW1wbGU issued",
            f"jwt {MASK} issued",
        ),
        ("google AIzaSyA-Example0Example0Example0Examp1e", f"google {MASK}"),
        ("npm npm_Example0Example0Example0Example0Exam", f"npm {MASK}"),
    ],
)
def test_credential_format_is_masked(line, expected):
    assert Redactor().line(line) == expected


@pytest.mark.parametrize(
    "line",
    [
        "commit 0123456789abcdef0123456789abcdef01234567 changed the key policy",
        "  + source_code_hash = \"Yk1hQnVzZXJDb250ZW50SGFzaEV4YW1wbGUwMDAwMDA=\"",
        "https://registry.terraform.io/providers/hashicorp/aws/5.80.0/download/linux/amd64",
        "  + arn = \"arn:aws:secretsmanager:eu-west-1:111111111111:secret:db-token-AbCdEf\"",
        "npm_config_cache=/tmp/npm-cache",
        "Plan: 3 to add, 0 to change, 0 to destroy.",
        "  + kms_master_key_id = \"alias/payments-data\"",
    ],
)
def test_ordinary_line_is_unchanged(line):
    assert Redactor().line(line) == line


def test_extra_pattern_is_masked():
    redactor = Redactor(extra_patterns=[r"(?P<keep>employee-)\d{6}"])
    assert redactor.line("owner employee-123456") == f"owner employee-{MASK}"


# --- secret-like keys --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('password = "hunter2-secret"', f"password = {MASK}"),
        ('  ~ "DB_PASSWORD"   = "old-value" -> "new-value"', f'  ~ "DB_PASSWORD"   = {MASK}'),
        ('  ~ "api_key" = "old-key-value" -> (known after apply)', f'  ~ "api_key" = {MASK}'),
        ("DB_PASSWORD=abc123 LOG_LEVEL=info", f"DB_PASSWORD={MASK} LOG_LEVEL=info"),
        ('export API_TOKEN="xyz-123"', f"export API_TOKEN={MASK}"),
        ("client_secret: s3cr3t-value", f"client_secret: {MASK}"),
        ("X-Auth-Token: abcdef123456", f"X-Auth-Token: {MASK}"),
        ('{"password":"x1y2z3","user":"bob"}', f'{{"password":{MASK},"user":"bob"}}'),
        ("--password=abc --user=bob", f"--password={MASK} --user=bob"),
        ("spring.datasource.password = s3cr3t", f"spring.datasource.password = {MASK}"),
        ("connectionString = Server=db;Password=x", f"connectionString = {MASK};Password={MASK}"),
        ("note: rotate it, password=abc", f"note: rotate it, password={MASK}"),
        ('credentials = { user = "admin", pass = "p4ss" } done', f"credentials = {MASK} done"),
        ("secret_string = jsonencode({\"a\": \"b\"})", f"secret_string = {MASK}"),
    ],
)
def test_secret_key_value_is_masked(line, expected):
    assert Redactor().line(line) == expected


@pytest.mark.parametrize(
    "line",
    [
        "  + password = (sensitive value)",
        "  + token    = (known after apply)",
        "token_count = 5000",
        '  + secret_arn = "arn:aws:secretsmanager:eu-west-1:111111111111:secret:db"',
        '  + password_length = 24',
        'bucket_name = "payments-invoices-prod"',
        'key = "prod/orders/terraform.tfstate"',
        "PWD=/home/runner/work",
        'author = "Jane Doe"',
        'oauth_client_id = "1234.apps.example.invalid"',
        "aws_iam_access_key.ci = {",
        "password:no-space-after-colon",
        "token==expected",
    ],
)
def test_ordinary_key_value_is_unchanged(line):
    assert Redactor().line(line) == line


@pytest.mark.parametrize(
    "key",
    [
        "password", "DB_PASSWORD", "db-passwd", "passphrase", "client_secret", "clientSecret", "SecretString",
        "token", "auth token", "X-Auth-Token", "api_key", "apiKey", "x-api-key", "access_key", "secret_key",
        "aws_secret_access_key", "private_key", "private_key_pem", "credential", "credentials",
        "connection_string", "ConnectionString", "Authorization", "auth", "db_pwd", "session_token",
        "spring.datasource.password", "AccountKey", "Cookie",
    ],
)
def test_secret_like_key(key):
    assert is_secret_key(key)


@pytest.mark.parametrize(
    "key",
    [
        "token_count", "secret_arn", "secret_name", "password_length", "access_key_id", "kms_master_key_id",
        "aws_iam_access_key.ci", 'module.ci.aws_iam_access_key.deploy["x"]', "random_password.db",
        "author", "oauth_client_id", "PWD", "key", "public_key", "bucket", "description", "id",
    ],
)
def test_ordinary_key(key):
    assert not is_secret_key(key)


# --- known secrets -----------------------------------------------------------------------------


def test_known_secret_is_masked_anywhere():
    redactor = Redactor()
    redactor.add_secret("Ov3rl4p-Secret")
    assert redactor.line("value=xOv3rl4p-Secretx here") == f"value=x{MASK}x here"


def test_known_secret_longest_wins():
    redactor = Redactor(known_secrets=["abcd", "abcdefgh"])
    assert redactor.line("got abcdefgh!") == f"got {MASK}!"


def test_overlapping_known_secrets_are_both_masked():
    redactor = Redactor(known_secrets=["abcdef", "defghi"])
    assert redactor.line("xabcdefghix") == f"x{MASK}x"


def test_short_known_secret_is_ignored():
    redactor = Redactor(known_secrets=["abc", "    "])
    assert redactor.line("abc and spaces    here") == "abc and spaces    here"
    assert redactor.known_secrets == []


def test_known_secret_escaped_forms_are_masked():
    redactor = Redactor()
    redactor.add_secret('p"a\\ss w/ord')
    assert redactor.line('"value": "p\\"a\\\\ss w/ord"') == f'"value": "{MASK}"'
    assert redactor.line("postgres://u:p%22a%5Css%20w%2Ford@h") == f"postgres://u:{MASK}@h"


def test_multiline_known_secret_masked_by_line():
    redactor = Redactor(known_secrets=["first-line-value\nsecond-line-value"])
    assert redactor.line("  first-line-value") == f"  {MASK}"
    assert redactor.line("second-line-value") == MASK
    assert redactor.text("a first-line-value\nsecond-line-value b") == f"a {MASK} b"


def test_many_known_secrets_are_masked():
    secrets = [f"known-secret-{number:05d}" for number in range(3000)]
    redactor = Redactor(known_secrets=secrets)
    assert redactor.line("x known-secret-02999 y known-secret-00000 z") == f"x {MASK} y {MASK} z"
    assert redactor.line("known-secret-1") == "known-secret-1"
    assert len(redactor.known_secrets) == 3000


def test_secrets_added_between_lines_overlap():
    redactor = Redactor()
    redactor.add_secret("abcdef")
    assert redactor.line("abcdef") == MASK
    redactor.add_secret("defghi")
    assert redactor.line("xabcdefghix") == f"x{MASK}x"
    redactor.add_secret("ghijkl")
    assert redactor.line("abcdefghijkl ghijkl!") == f"{MASK} {MASK}!"


def test_numeric_known_secret_is_masked():
    redactor = Redactor()
    redactor.add_secret(98765)
    assert redactor.line("pin is 98765") == f"pin is {MASK}"


# --- multi-line secrets ------------------------------------------------------------------------

PRIVATE_KEY_LINES = [
    'tls_key = <<EOT',
    "-----BEGIN RSA PRIVATE KEY-----",
    "MIIEowIBAAKCAQEAexampleexampleexampleexampleexampleexample0000",
    "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtz",
    "-----END RSA PRIVATE KEY-----",
    "EOT",
    'bucket_name = "after-the-key"',
]


def test_private_key_split_across_lines():
    redactor = Redactor()
    redacted = [redactor.line(line) for line in PRIVATE_KEY_LINES]
    assert redacted == [
        'tls_key = <<EOT',
        "-----BEGIN RSA PRIVATE KEY-----",
        MASK,
        MASK,
        "-----END RSA PRIVATE KEY-----",
        "EOT",
        'bucket_name = "after-the-key"',
    ]


def test_private_key_text_matches_lines():
    redactor = Redactor()
    assert Redactor().text("\n".join(PRIVATE_KEY_LINES)) == "\n".join(redactor.line(line) for line in PRIVATE_KEY_LINES)


def test_line_with_newlines_is_split():
    redactor = Redactor()
    assert redactor.line('password = "first\nsecond" port = 5432') == f'password = {MASK}\n{MASK}" port = 5432'
    assert redactor.line("-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0") == f"-----BEGIN PRIVATE KEY-----\n{MASK}"
    assert redactor.line("MIIEvQIBADANBgkqhkiG9w0") == MASK


def test_text_leaves_line_state_alone():
    redactor = Redactor()
    redactor.line("-----BEGIN PRIVATE KEY-----")
    assert redactor.text("ordinary = \"text\"") == 'ordinary = "text"'
    assert redactor.line("MIIEvQIBADANBgkqhkiG9w0BAQEFAASC") == MASK


def test_private_key_on_one_line_is_masked():
    line = '"pem": "-----BEGIN EC PRIVATE KEY-----\\nMHcCAQEEIexample\\n-----END EC PRIVATE KEY-----\\n", "kind": "ec"'
    assert Redactor().line(line) == f'"pem": "-----BEGIN EC PRIVATE KEY-----{MASK}-----END EC PRIVATE KEY-----\\n", "kind": "ec"'


def test_private_key_in_secret_heredoc_is_masked():
    lines = [
        "  + private_key_pem = <<-EOT",
        "        -----BEGIN OPENSSH PRIVATE KEY-----",
        "        b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ",
        "        -----END OPENSSH PRIVATE KEY-----",
        "    EOT",
        '  + name = "visible"',
    ]
    redactor = Redactor()
    assert [redactor.line(line) for line in lines] == [
        f"  + private_key_pem = {MASK}",
        f"        {MASK}",
        f"        {MASK}",
        f"        {MASK}",
        "    EOT",
        '  + name = "visible"',
    ]


def test_secret_map_block_is_masked():
    text = "\n".join([
        "  + credentials = {",
        '      + "password" = "p4ss-in-map"',
        '      + "username" = "admin"',
        "    }",
        '  + secret_string = jsonencode(',
        "        {",
        '          + pin = "1234-in-json"',
        "        }",
        "    )",
        '  + tags = { Name = "kept" }',
    ])
    assert Redactor().text(text).split("\n") == [
        f"  + credentials = {MASK}",
        f"      {MASK}",
        f"      {MASK}",
        "    }",
        f"  + secret_string = {MASK}",
        f"        {MASK}",
        f"          {MASK}",
        f"        {MASK}",
        "    )",
        '  + tags = { Name = "kept" }',
    ]


def test_secret_string_across_lines_is_masked():
    redactor = Redactor()
    assert redactor.line('  ~ token = "old" -> "first half') == f"  ~ token = {MASK}"
    assert redactor.line("  second half") == f"  {MASK}"
    assert redactor.line('third \\" half", region = "eu-west-1"') == f'{MASK}", region = "eu-west-1"'
    assert redactor.line('name = "visible"') == 'name = "visible"'


def test_plan_heredoc_inside_secret_map():
    # Real `terraform plan` output (Terraform 1.11.4) of a map under `credentials` whose strings
    # are heredocs with blank lines.
    plan_output = (TESTS_DIR / "data" / "redaction" / "plan-nested-heredoc.txt").read_text(encoding="utf-8")
    redacted = Redactor().text(plan_output)
    for secret in ("svc-admin-4411", "note-first-4412", "note-second-4413", "list-item-4414", "list-item-4415", "pem-line-4416", "pem-line-4417", "pem-line-4418"):
        assert secret not in redacted
    for expected_line in ('          + credentials = (redacted)', '          + region      = "eu-west-1"', "          + json        = jsonencode(", "                      + b = \"c\"", "Plan: 1 to add, 0 to change, 0 to destroy."):
        assert expected_line in redacted.split("\n")


def test_blank_line_ends_unclosed_block():
    redactor = Redactor()
    assert redactor.line("token = {") == f"token = {MASK}"
    assert redactor.line('  "a" = "b"') == f"  {MASK}"
    assert redactor.line("") == ""
    assert redactor.line('region = "eu-west-1"') == 'region = "eu-west-1"'


# --- structures --------------------------------------------------------------------------------


def test_structure_masks_secret_keys_at_depth():
    value = {
        "shards": [
            {"id": "prod/orders", "settings": {"database": {"password": "deep-pass-1", "port": 5432}}},
            {"id": "prod/payments", "settings": {"database": {"Client-Secret": {"value": "deep-pass-2"}}}},
        ],
        "token_count": 12,
    }
    assert Redactor().structure(value) == {
        "shards": [
            {"id": "prod/orders", "settings": {"database": {"password": MASK, "port": 5432}}},
            {"id": "prod/payments", "settings": {"database": {"Client-Secret": MASK}}},
        ],
        "token_count": 12,
    }


def test_structure_masks_list_under_secret_key():
    value = {"level1": {"level2": {"api_keys": [{"name": "a", "value": "k1"}, {"name": "b", "value": "k2"}]}}}
    assert Redactor().structure(value) == {"level1": {"level2": {"api_keys": MASK}}}


def test_structure_redacts_strings_and_keeps_keys():
    value = {"aws_iam_access_key.ci": {"id": "AKIAIOSFODNN7EXAMPLE", "status": "Active"}, "steps": ["ok", "password = hunter2x"]}
    assert Redactor().structure(value) == {
        "aws_iam_access_key.ci": {"id": MASK, "status": "Active"},
        "steps": ["ok", f"password = {MASK}"],
    }


def test_structure_keeps_scalars():
    value = {"count": 3, "ratio": 0.5, "enabled": True, "missing": None, "pair": ("a", 1)}
    assert Redactor().structure(value) == {"count": 3, "ratio": 0.5, "enabled": True, "missing": None, "pair": ["a", 1]}


def test_structure_masks_known_numeric_secret():
    redactor = Redactor(known_secrets=["98765"])
    assert redactor.structure({"pin_code": 98765, "port": 5432}) == {"pin_code": MASK, "port": 5432}


def test_structure_does_not_change_input():
    value = {"outer": [{"password": "p", "text": "token: abcdef"}]}
    original = copy.deepcopy(value)
    Redactor().structure(value)
    assert value == original


def test_structure_output_is_json():
    redacted = Redactor().structure({"a": [{"secret": {"b": 1}}, "Bearer abcdefghijk"]})
    assert json.loads(json.dumps(redacted)) == {"a": [{"secret": MASK}, f"Bearer {MASK}"]}


# --- plans -------------------------------------------------------------------------------------

SENSITIVE_PLAN_VALUES = [
    "postgres://admin:out-conn-pass-7777@orders-db.internal:5432/orders",
    "prior-random-result-9999",
    "env-signing-secret-3333",
    "prior-output-token-8888",
    "deep-list-secret-4444",
    "var-key-billing-7781",
    "var-Admin-Pass-2024",
    "var-key-search-9912",
    "drifted-value-1212",
    "drifted-value-1313",
    "new-db-Pass-2222",
    "old-db-Pass-1111",
    "map-token-6666",
    "svc-user-5555",
    "98765",
    "3600",
]


def test_plan_sensitive_values_are_collected():
    plan = json.loads(SENSITIVE_PLAN.read_text(encoding="utf-8"))
    assert secrets_from_plan(plan) == SENSITIVE_PLAN_VALUES


def test_plan_ordinary_values_are_not_collected():
    secrets = secrets_from_plan(json.loads(SENSITIVE_PLAN.read_text(encoding="utf-8")))
    for ordinary in ("orders-db", "prod", "info", "orders-api", "search-admin", "orders-db.internal:5432", "eu-west-1", "5432", "abc"):
        assert ordinary not in secrets


@pytest.mark.parametrize("path", sorted(PLANS_DIR.glob("*.json")), ids=lambda path: path.stem)
def test_real_plan_has_no_sensitive_values(path):
    # None of these plans declares a sensitive variable or output, or has a sensitive attribute.
    assert secrets_from_plan(json.loads(path.read_text(encoding="utf-8"))) == []


def test_real_plan_with_sensitive_attribute():
    plan = json.loads((PLANS_DIR / "prod--orders-api--lambda.json").read_text(encoding="utf-8"))
    change = plan["resource_changes"][0]["change"]
    change["after_sensitive"]["environment"] = [{"variables": {"LEDGER_BUCKET": True}}]
    assert secrets_from_plan(plan) == ["payments-ledger-333333333333-eu-west-1"]


@pytest.mark.parametrize(
    ("plan", "expected"),
    [
        ({}, []),
        (None, []),
        ([], []),
        ({"resource_changes": None, "output_changes": [], "variables": "x", "configuration": {"root_module": None}}, []),
        ({"resource_changes": [None, {"change": None}, {"change": {"after": {"a": "value-1"}, "after_sensitive": [True]}}]}, ["value-1"]),
        ({"output_changes": {"o": {"after": ["value-2"], "after_sensitive": {"x": True}}}}, ["value-2"]),
        ({"planned_values": {"outputs": {"o": {"sensitive": "yes", "value": "value-3"}}}}, []),
    ],
)
def test_malformed_plan_does_not_crash(plan, expected):
    assert secrets_from_plan(plan) == expected


def test_mismatched_shapes_fail_closed():
    plan = {"output_changes": {"o": {"after": ["value-one", "value-two"], "after_sensitive": {"x": True}}}}
    assert secrets_from_plan(plan) == ["value-one", "value-two"]


def test_add_plan_masks_sensitive_values():
    redactor = Redactor()
    redactor.add_plan(json.loads(SENSITIVE_PLAN.read_text(encoding="utf-8")))
    assert redactor.line("  ~ identifier = \"orders-db\" (pass new-db-Pass-2222)") == f'  ~ identifier = "orders-db" (pass {MASK})'
    assert redactor.line("drifted-value-1313 and var-key-search-9912") == f"{MASK} and {MASK}"
    assert redactor.line("postgres://admin:out-conn-pass-7777@orders-db.internal:5432/orders") == MASK


# --- failure -----------------------------------------------------------------------------------


class RaisingPattern:
    """A stand-in for a compiled regex that raises on use, with the input in the message."""

    def _raise(self, text, *args, **kwargs):
        raise ValueError(f"cannot redact {text!r}")

    def sub(self, replacement, text, *args, **kwargs):
        self._raise(text)

    search = match = finditer = _raise


def test_line_fails_closed(caplog):
    redactor = Redactor()
    redactor.patterns.append(RaisingPattern())
    with caplog.at_level(logging.DEBUG, logger="orchestrator.redaction"):
        assert redactor.line("password = hunter2-secret") == WITHHELD
    assert "hunter2-secret" not in caplog.text
    assert "ValueError" in caplog.text


def test_text_fails_closed(monkeypatch):
    monkeypatch.setattr(redaction, "_KEY", RaisingPattern())
    assert Redactor().text("first line\nsecond line with sk_live_51Hq2ExampleExampleExample0000") == WITHHELD


def test_structure_fails_closed(monkeypatch):
    monkeypatch.setattr(redaction, "_KEY", RaisingPattern())
    assert Redactor().structure({"outer": [{"error": "token leaked here"}]}) == WITHHELD


def test_cyclic_structure_fails_closed():
    value: dict = {"name": "loop"}
    value["self"] = value
    assert Redactor().structure(value) == WITHHELD


def test_failures_are_counted():
    redactor = Redactor()
    redactor.patterns.append(RaisingPattern())
    redactor.line("one")
    redactor.text("two")
    redactor.structure(["three"])
    assert redactor.failures == 3


# --- threads and speed -------------------------------------------------------------------------


def test_concurrent_use_masks_every_line():
    redactor = Redactor(known_secrets=["shared-secret-value"])
    results: list[str] = []
    errors: list[BaseException] = []

    def stream(number: int) -> None:
        try:
            for index in range(300):
                redactor.add_secret(f"thread-{number}-secret-{index}")
                results.append(redactor.line(f"shard {number} line {index}: shared-secret-value password=p{index}x"))
        except BaseException as error:  # noqa: BLE001 - collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=stream, args=(number,)) for number in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert len(results) == 8 * 300
    assert all("shared-secret-value" not in line and line.endswith(f"password={MASK}") for line in results)


def test_twenty_thousand_lines_are_fast():
    lines = []
    for index in range(2000):
        lines += [
            f'aws_s3_bucket.this["bucket-{index}"]: Creating...',
            f'  + bucket = "payments-{index}-prod"',
            f'  ~ "DB_PASSWORD" = "old-{index}" -> "new-{index}"',
            "aws_iam_access_key.ci: Creation complete after 1s [id=AKIAIOSFODNN7EXAMPLE]",
            '  + tags = { "Owner" = "payments-team" }',
            f'webhook = "https://hooks.example.invalid/a?token=ghp_ExampleExampleExampleExample0000000&n={index}"',
            "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJleGFtcGxlIn0.c2lnbmF0dXJlLWV4YW1wbGU",
            "    # (3 unchanged attributes hidden)",
            "",
            "Plan: 1 to add, 0 to change, 0 to destroy.",
        ]
    redactor = Redactor(known_secrets=[f"known-secret-{number:04d}" for number in range(500)])

    # CPU time of this process, so other work on a busy machine does not count.
    started = time.process_time()
    redacted = [redactor.line(line) for line in lines]
    elapsed = time.process_time() - started

    assert len(redacted) == 20_000
    assert "AKIAIOSFODNN7EXAMPLE" not in "\n".join(redacted)
    assert elapsed < 2.0
