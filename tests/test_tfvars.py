"""Tests for the tfvars reader: values, positions and error messages.

Tests marked ``terraform`` run Terraform itself (offline, no providers) to check that the
values and the rejections match what Terraform does with the same files.
"""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from orchestrator.errors import OrchestratorError
from orchestrator.tfvars import (
    MAX_NESTING_DEPTH,
    Diagnostic,
    Position,
    TfvarsDocument,
    TfvarsSyntaxError,
    load_tfvars,
    parse_tfvars,
)

DATA = Path(__file__).parent / "data" / "tfvars"

VALID_CASES = {
    "comment-in-list.tfvars": {
        "project": "data-lake",
        "s3_buckets": {
            "raw": {"versioning": True, "readers": ["analytics", "ml-platform"]},
        },
    },
    "empty-heredoc.tfvars": {
        "project": "notes",
        "kms_keys": {"audit": {"description": ""}},
    },
    "heredoc-quote.tfvars": {
        "project": "ops-hooks",
        "lambda_functions": {
            "notifier": {
                "runtime": "python3.12",
                "description": 'Posts a "deploy finished message to chat\n',
            },
        },
    },
    "iam-escape.tfvars": {
        "project": "developer-access",
        "iam_roles": {
            "developer": {
                "inline_policy": (
                    "{\n"
                    '  "Version": "2012-10-17",\n'
                    '  "Statement": [{\n'
                    '    "Effect": "Allow",\n'
                    '    "Action": "s3:*",\n'
                    '    "Resource": "arn:aws:s3:::home-bucket/${aws:username}/*"\n'
                    "  }]\n"
                    "}\n"
                ),
            },
        },
    },
    "unicode.tfvars": {
        "project": "café-münchen",
        "tags": {"Owner": "Zoë Ångström", "CostCentre": "€-42"},
    },
}

# Each case: file name, line, column, and fragments the message must contain.
INVALID_CASES = [
    ("unclosed-brace.tfvars", 3, 14, ["`{`", "`invoices`", "line 3", "never closed"]),
    ("stray-comma.tfvars", 5, 21, ["Doubled comma", "`true`"]),
    ("unterminated-string.tfvars", 1, 11, ["string opened at line 1", "not terminated"]),
    (
        "mismatched-bracket.tfvars",
        6,
        5,
        ["`[`", "line 4", "closed by `}` at line 6", "Replace the `}` with `]`"],
    ),
]

# Inputs that Terraform accepts, with the values Terraform 1.11 returns for them. The
# terraform-marked tests check these values against Terraform itself.
TRICKY_CASES = {
    "escapes": (
        'newline_tab = "a\\nb\\tc\\rd"\n'
        'quote_backslash = "say \\"hi\\" \\\\ done"\n'
        'unicode_escapes = "\\u00e9\\U0001F600"\n'
        'dollar_escape = "$${aws:username}"\n'
        'dollar_run = "$$${x}"\n'
        'percent_escape = "%%{literal}"\n'
        'lone_signs = "$ $$ % %% {x} $"\n'
        'combining_literal = "e\u0301"\n'
        'combining_escape = "e\\u0301"\n',
        {
            "newline_tab": "a\nb\tc\rd",
            "quote_backslash": 'say "hi" \\ done',
            "unicode_escapes": "é\U0001F600",
            "dollar_escape": "${aws:username}",
            "dollar_run": "$${x}",
            "percent_escape": "%{literal}",
            "lone_signs": "$ $$ % %% {x} $",
            "combining_literal": "\u00e9",
            "combining_escape": "\u00e9",
        },
    ),
    "heredocs": (
        "plain = <<EOT\n"
        "  keeps indentation\n"
        "backslash \\n stays, $${x} unescapes\n"
        "EOT\n"
        "flush = <<-EOT\n"
        "    first\n"
        "      second\n"
        "\n"
        "  third\n"
        "    EOT\n"
        "whitespace_only_line = <<-EOT\n"
        "    x\n"
        "       \n"
        "  y\n"
        "  EOT\n"
        "tabs = <<-EOT\n"
        "\tx\n"
        "\t\ty\n"
        "\tEOT\n"
        "nbsp_indent = <<-EOT\n"
        "\u00a0x\n"
        "  y\n"
        "  EOT\n"
        "indented_closing = <<EOT\n"
        "text\n"
        "    EOT   \n"
        "empty = <<EOT\n"
        "EOT\n"
        "blank_line = <<EOT\n"
        "\n"
        "EOT\n"
        "dashed_marker = <<END-OF-TEXT\n"
        "text\n"
        "END-OF-TEXT\n"
        "marker_inside_text = <<EOT\n"
        "EOTx\n"
        "x EOT\n"
        "EOT\n"
        "in_list = [<<EOT\n"
        "item\n"
        "EOT\n"
        ', "next"]\n'
        "in_object = { text = <<EOT\n"
        "value\n"
        "EOT\n"
        "}\n",
        {
            "plain": "  keeps indentation\nbackslash \\n stays, ${x} unescapes\n",
            "flush": "  first\n    second\n\nthird\n",
            "whitespace_only_line": "  x\n       \ny\n",
            "tabs": "x\n\ty\n",
            "nbsp_indent": "x\n y\n",
            "indented_closing": "text\n",
            "empty": "",
            "blank_line": "\n",
            "dashed_marker": "text\n",
            "marker_inside_text": "EOTx\nx EOT\n",
            "in_list": ["item\n", "next"],
            "in_object": {"text": "value\n"},
        },
    ),
    "numbers": (
        "leading_zero = 007\n"
        "exponent = 1e3\n"
        "negative_exponent = 1.5e-3\n"
        "big = 123456789012345678901234567890\n"
        "upper_exponent = 1E+2\n"
        "fraction = 0.1\n"
        "integral_fraction = 2.50e1\n"
        "one_point_zero = 1.0\n"
        "negative = -42\n"
        "spaced_negative = - 7\n"
        "double_negative = --3\n"
        "negative_zero = -0\n"
        "negative_fraction = -0.25\n"
        "long_fraction = 12345678901234567890.5\n"
        "huge = 1e400\n",
        {
            "leading_zero": 7,
            "exponent": 1000,
            "negative_exponent": 0.0015,
            "big": 123456789012345678901234567890,
            "upper_exponent": 100,
            "fraction": 0.1,
            "integral_fraction": 25,
            "one_point_zero": 1,
            "negative": -42,
            "spaced_negative": -7,
            "double_negative": 3,
            "negative_zero": 0,
            "negative_fraction": -0.25,
            "long_fraction": 12345678901234567890.5,
            "huge": 10**400,
        },
    ),
    "structures": (
        "# a comment before everything\n"
        "tags = {\n"
        '  Name         = "web"  # trailing comment\n'
        '  "with space" = 1\n'
        '  colon: true, comma_separated = "x",\n'
        "  dash-key = null\n"
        '  1 = "number key"\n'
        '  1.50 = "formatted number key"\n'
        '  12345678901234567890.5 = "long number key"\n'
        '  1e20 = "exponent number key"\n'
        '  0.000001 = "small number key"\n'
        '  true = "keyword key"\n'
        "  // another comment style\n"
        "  /* block */ nested = { inner = [1, 2, 3,] }\n"
        "}\n"
        "matrix = [\n"
        "  [1, 2],\n"
        "  [\n"
        "    3, # three\n"
        "    /* multi\n"
        "       line */\n"
        "    4\n"
        "  ],\n"
        "  []\n"
        "  ,\n"
        "]\n"
        "objects = [{ a = 1 }, { b = [] }, {}]\n"
        "empty_object = {}\n"
        "empty_list = []\n"
        "nothing = null\n"
        'mixed = [1, "a", true, null, { k = "v" }]\n'
        'repeated = { key = "first", key = "second" }\n'
        'labels = { café = "crème", "Zoë" = "ü" }\n'
        'after_comment = "x" /* block\n'
        "spanning lines */\n"
        "last = 1 # no line break at the end",
        {
            "tags": {
                "Name": "web",
                "with space": 1,
                "colon": True,
                "comma_separated": "x",
                "dash-key": None,
                "1": "number key",
                "1.5": "formatted number key",
                "12345678901234567890.5": "long number key",
                "100000000000000000000": "exponent number key",
                "0.000001": "small number key",
                "true": "keyword key",
                "nested": {"inner": [1, 2, 3]},
            },
            "matrix": [[1, 2], [3, 4], []],
            "objects": [{"a": 1}, {"b": []}, {}],
            "empty_object": {},
            "empty_list": [],
            "nothing": None,
            "mixed": [1, "a", True, None, {"k": "v"}],
            "repeated": {"key": "second"},
            "labels": {"café": "crème", "Zoë": "ü"},
            "after_comment": "x",
            "last": 1,
        },
    ),
    "comments": (
        "object = { # after the brace\n"
        "  key /* before equals */ = /* before value */ 1 // after value\n"
        "  other = 2, # after a comma\n"
        "  /* alone */\n"
        "} # after the closing brace\n"
        "list = [ // after the bracket\n"
        '  "a", /* between */ "b" # before the closing bracket\n'
        "]\n"
        "inline = { a = 1 /* c */ }\n"
        'hash_in_string = "x # not a comment // nor this /* nor this */"\n'
        'tab_in_string = "a\tb"\n',
        {
            "object": {"key": 1, "other": 2},
            "list": ["a", "b"],
            "inline": {"a": 1},
            "hash_in_string": "x # not a comment // nor this /* nor this */",
            "tab_in_string": "a\tb",
        },
    ),
    "crlf": (
        'name = "x"\r\n'
        "list = [\r\n"
        "  1,\r\n"
        "  2,\r\n"
        "]\r\n"
        "text = <<-EOT\r\n"
        "    one\r\n"
        "      two\r\n"
        "    EOT\r\n"
        "object = {\r\n"
        '  k = "v" # comment\r\n'
        "  n = 2\r\n"
        "}\r\n",
        {
            "name": "x",
            "list": [1, 2],
            "text": "one\r\n  two\r\n",
            "object": {"k": "v", "n": 2},
        },
    ),
    "byte-order-mark": (
        '\ufeffname = "bom"\nlist = ["a"]\n',
        {"name": "bom", "list": ["a"]},
    ),
}

# Each case: id, text, line, column, and fragments the message must contain. Terraform
# rejects every one of them too.
ERROR_CASES = [
    ("missing-equals", 'project "x"\n', 1, 9, ["Missing `=`", "`project`"]),
    ("name-alone", 'project\nregion = "x"\n', 1, 1, ["`project`", "not followed by `=`"]),
    ("missing-value", "project =\n", 1, 9, ["`project` has no value"]),
    ("missing-nested-value", "a = {\n  b =\n}\n", 2, 5, ["`b` has no value"]),
    ("bareword", "versioning = yes\n", 1, 14, ["`yes`", "string needs quotes", '"yes"']),
    ("bareword-name", "region = eu-west-1\n", 1, 10, ["`eu-west-1`", '"eu-west-1"']),
    ("capitalized-true", "enabled = True\n", 1, 11, ["Write `true`"]),
    ("function-call", 'name = upper("x")\n', 1, 8, ["Function calls", "`upper(...)`"]),
    ("reference", "region = var.region\n", 1, 10, ["`var.region`", "not allowed"]),
    ("stray-closing-brace", "a = 1\n}\n", 2, 1, ["Unexpected `}`", "no `{` is open"]),
    ("stray-closing-bracket", "a = [1]]\n", 1, 8, ["Unexpected `]`"]),
    (
        "unterminated-heredoc",
        "a = 1\nb = <<EOT\ntext\n",
        2,
        5,
        ["`<<EOT`", "line 2", "never closed", "only `EOT`"],
    ),
    ("heredoc-marker-at-end", "a = <<EOT\ntext\nEOT", 1, 5, ["line break", "`EOT`"]),
    (
        "heredoc-marker-not-alone",
        "a = { b = <<EOT\nx\nEOT }\n",
        1,
        11,
        ["never closed", "alone on its line", "line 3"],
    ),
    ("heredoc-opener-text", "a = <<EOT # note\nx\nEOT\n", 1, 5, ["must end its line"]),
    ("heredoc-without-marker", "a = << EOT\nx\nEOT\n", 1, 5, ["marker name"]),
    (
        "unterminated-block-comment",
        "a = 1\n/* note\nb = 2\n",
        2,
        1,
        ["`/*`", "line 2", "never closed", "`*/`"],
    ),
    ("invalid-escape", 'path = "C:\\data"\n', 1, 11, ["`\\d`", "not a valid escape"]),
    ("short-unicode-escape", 'a = "\\u12"\n', 1, 6, ["four hexadecimal digits"]),
    ("surrogate-escape", 'a = "\\uD800"\n', 1, 6, ["`\\uD800`", "UTF-8"]),
    ("doubled-comma-in-list", "a = [1,,2]\n", 1, 8, ["Doubled comma after `1`"]),
    ("leading-comma", "a = [,1]\n", 1, 6, ["before the first item"]),
    ("missing-comma-in-list", "a = [1 2]\n", 1, 8, ["Missing comma", "`a`"]),
    (
        "missing-separator-in-object",
        "a = { b = 1 c = 2 }\n",
        1,
        13,
        ["Missing line break or comma", "`c`"],
    ),
    (
        "block-comment-is-no-separator",
        "a = { b = 1 /*\n*/ c = 2 }\n",
        2,
        4,
        ["Missing line break or comma"],
    ),
    ("comma-on-next-line", "a = { b = 1\n, c = 2 }\n", 2, 1, ["same line", "line 1"]),
    ("key-then-line-break", "a = { b\n= 1 }\n", 1, 7, ["`b`", "same line"]),
    ("two-attributes-on-a-line", "a = 1 b = 2\n", 1, 7, ["own line"]),
    ("comma-between-attributes", "a = 1, b = 2\n", 1, 6, ["line breaks", "remove the comma"]),
    ("block", "tags {\n  a = 1\n}\n", 1, 1, ["Blocks", "`tags = { ... }`"]),
    ("labelled-block", 'tags "x" {\n}\n', 1, 1, ["Blocks"]),
    ("top-level-colon", "a: 1\n", 1, 2, ["`=`, not `:`"]),
    ("quoted-attribute-name", '"a" = 1\n', 1, 1, ["must not be quoted"]),
    ("duplicate-attribute", "a = 1\nb = 2\na = 3\n", 3, 1, ["`a`", "line 3", "line 1"]),
    ("number-with-trailing-dot", "a = 1.\n", 1, 5, ["`1.`", "not a valid number"]),
    ("hexadecimal-number", "a = 0x10\n", 1, 5, ["`0x10`", "not a valid number"]),
    ("single-quotes", "a = 'x'\n", 1, 5, ["double quotes"]),
    ("character-counting", 'tag = "Zoë" x\n', 1, 13, ["`x`"]),
    ("unexpected-character", "a = @\n", 1, 5, ["Unexpected character"]),
    ("line-break-in-string", 'a = "one\rtwo"\n', 1, 5, ["not terminated"]),
    (
        "truncated-file",
        "a = {\n  b = {\n    c = 1\n",
        2,
        7,
        ["`b`", "never closed", "end of the file"],
    ),
    (
        "missing-bracket-before-brace",
        "a = {\n  b = [\n    1,\n}\n",
        2,
        7,
        ["`[`", "`b`", "missing `]` before line 4"],
    ),
    (
        "missing-bracket-before-key",
        "a = {\n  b = [\n    1,\n  c = 2\n}\n",
        2,
        7,
        ["`[`", "not closed before `c`"],
    ),
    (
        "missing-inner-brace",
        "a = {\n  b = {\n    c = 1\n}\nd = 2\n",
        2,
        7,
        ["`b`", "never closed", "before line 4"],
    ),
    ("object-closed-by-bracket", "a = { b = 1 ]\n", 1, 13, ["Replace the `]` with `}`"]),
    ("list-closed-by-brace", "a = [1, 2 }\n", 1, 11, ["Replace the `}` with `]`"]),
    (
        "list-unclosed-on-one-line",
        "a = { b = [1, 2 }\n",
        1,
        17,
        ["`[`", "`b`", "Add the missing `]` before the `}`"],
    ),
    ("carriage-return-alone", "a = 1\rb = 2\n", 1, 6, ["carriage return"]),
]

# Inputs that Terraform 1.11 accepts but this reader rejects on purpose, because deployment
# files should contain plain values and no expressions.
STRICTER_THAN_TERRAFORM_CASES = [
    ("template", 'a = "${"x"}"\n', 1, 6, ["templates are not allowed in a .tfvars file"]),
    (
        "heredoc-template",
        "a = <<EOT\n%{ if true }x%{ endif }\nEOT\n",
        2,
        1,
        ["templates are not allowed in a .tfvars file"],
    ),
    ("operator", "a = 1 + 2\n", 1, 7, ["`+`", "Write the resulting value"]),
    ("conditional", "a = true ? 1 : 2\n", 1, 10, ["`?`"]),
    ("negated-string", 'a = -"1"\n', 1, 5, ["minus sign"]),
    ("parenthesized-key", 'a = { ("b") = 1 }\n', 1, 7, ["`(`"]),
    ("huge-number", "a = 1e5000\n", 1, 5, ["more than 4000 digits"]),
]


def _parse_error(text: str) -> TfvarsSyntaxError:
    with pytest.raises(TfvarsSyntaxError) as caught:
        parse_tfvars(text, "case.tfvars")
    return caught.value


def _assert_diagnostic(diagnostic: Diagnostic, line: int, column: int, fragments: list[str]):
    assert (diagnostic.line, diagnostic.column) == (line, column), diagnostic.message
    for fragment in fragments:
        assert fragment in diagnostic.message


# --- Case files


@pytest.mark.parametrize("name", sorted(VALID_CASES))
def test_valid_case_values(name):
    document = load_tfvars(DATA / "valid" / name)

    assert document.values == VALID_CASES[name]
    assert document.warnings == []


def test_iam_escape_keeps_file_unchanged():
    path = DATA / "valid" / "iam-escape.tfvars"
    before = path.read_bytes()

    policy = load_tfvars(path).values["iam_roles"]["developer"]["inline_policy"]

    assert "home-bucket/${aws:username}/*" in policy
    assert "$${" not in policy
    assert path.read_bytes() == before


@pytest.mark.parametrize("name, line, column, fragments", INVALID_CASES)
def test_invalid_case_diagnostic(name, line, column, fragments):
    path = DATA / "invalid" / name
    with pytest.raises(TfvarsSyntaxError) as caught:
        load_tfvars(path)

    diagnostics = caught.value.diagnostics
    assert len(diagnostics) == 1
    assert diagnostics[0].path == str(path)
    _assert_diagnostic(diagnostics[0], line, column, fragments)


def test_typo_key_parses_with_position():
    # The file is valid syntax, so schema checks reject the key and need its position.
    document = load_tfvars(DATA / "schema" / "typo-key.tfvars")

    assert document.values == {
        "project": "media",
        "s3_bucket": {"thumbnails": {"versioning": True}},
    }
    assert document.key_position("s3_bucket") == Position(2, 1)
    assert document.position_of(("s3_bucket", "thumbnails", "versioning")) == Position(3, 18)


# --- Values


@pytest.mark.parametrize("name", sorted(TRICKY_CASES))
def test_tricky_input_values(name):
    text, expected = TRICKY_CASES[name]

    assert parse_tfvars(text).values == expected


def test_numbers_have_python_types():
    values = parse_tfvars(TRICKY_CASES["numbers"][0]).values

    assert type(values["exponent"]) is int
    assert type(values["one_point_zero"]) is int
    assert type(values["huge"]) is int
    assert type(values["fraction"]) is float
    assert type(values["negative_fraction"]) is float


def test_booleans_stay_booleans():
    values = parse_tfvars("yes = true\nno = false\none = 1\n").values

    assert values["yes"] is True
    assert values["no"] is False
    assert type(values["one"]) is int


def test_empty_file_has_no_values():
    assert parse_tfvars("").values == {}
    assert parse_tfvars("# only a comment\n\n/* and a block */\n").values == {}


def test_repeated_object_key_warns():
    document = parse_tfvars('tags = {\n  a = { x = 1 }\n  a = { y = 2 }\n}\n', "case.tfvars")

    assert document.values == {"tags": {"a": {"y": 2}}}
    assert len(document.warnings) == 1
    _assert_diagnostic(document.warnings[0], 3, 3, ["`a`", "line 2", "ignored"])
    assert document.position_of(("tags", "a")) == Position(3, 3)
    assert document.position_of(("tags", "a", "x")) == Position(3, 3)


def test_deep_nesting_is_an_error():
    depth = MAX_NESTING_DEPTH + 1
    error = _parse_error("a = " + "[" * depth + "]" * depth + "\n")

    assert "nested more than" in error.diagnostics[0].message


# --- Errors


@pytest.mark.parametrize(
    "text, line, column, fragments",
    [pytest.param(*case[1:], id=case[0]) for case in ERROR_CASES + STRICTER_THAN_TERRAFORM_CASES],
)
def test_error_diagnostic(text, line, column, fragments):
    error = _parse_error(text)

    _assert_diagnostic(error.diagnostics[0], line, column, fragments)


def test_truncated_file_lists_every_open_bracket():
    error = _parse_error("a = {\n  b = [\n")

    positions = [(d.line, d.column) for d in error.diagnostics]
    assert positions == [(2, 7), (1, 5)]


def test_duplicate_attributes_all_reported():
    error = _parse_error("a = 1\na = 2\nb = 3\nb = 4\n")

    positions = [(d.line, d.column) for d in error.diagnostics]
    assert positions == [(2, 1), (4, 1)]


def test_syntax_error_is_orchestrator_error():
    error = _parse_error("a = \n")

    assert isinstance(error, OrchestratorError)
    assert str(error) == str(error.diagnostics[0])


def test_diagnostic_text_format():
    diagnostic = Diagnostic("vars/prod.tfvars", 3, 14, "Something is wrong.")

    assert str(diagnostic) == "vars/prod.tfvars:3:14: Something is wrong."


# --- Positions


def test_position_of_nested_key():
    document = load_tfvars(DATA / "valid" / "comment-in-list.tfvars")

    assert document.position_of(("s3_buckets",)) == Position(2, 1)
    assert document.position_of(("s3_buckets", "raw", "versioning")) == Position(4, 5)
    assert document.position_of(("s3_buckets", "raw", "readers", 0)) == Position(6, 7)
    assert document.position_of(("s3_buckets", "raw", "readers", 1)) == Position(8, 7)


def test_position_of_falls_back_to_ancestor():
    document = load_tfvars(DATA / "valid" / "comment-in-list.tfvars")

    assert document.position_of(("s3_buckets", "raw", "versionning")) == Position(3, 3)
    assert document.position_of(("s3_buckets", "raw", "readers", 7)) == Position(5, 5)
    assert document.position_of(("missing", "key")) == Position(1, 1)
    assert document.position_of(()) == Position(1, 1)


def test_columns_count_characters():
    document = load_tfvars(DATA / "valid" / "unicode.tfvars")

    assert document.position_of(("tags", "CostCentre")) == Position(2, 34)


def test_key_position():
    document = parse_tfvars('\n  region = "eu-west-1"\nname = "x"\n')

    assert document.key_position("region") == Position(2, 3)
    assert document.key_position("name") == Position(3, 1)
    with pytest.raises(KeyError):
        document.key_position("missing")


def test_positions_ignore_byte_order_mark():
    document = parse_tfvars(TRICKY_CASES["byte-order-mark"][0])

    assert document.key_position("name") == Position(1, 1)
    assert document.position_of(("list", 0)) == Position(2, 9)


def test_positions_with_crlf():
    document = parse_tfvars(TRICKY_CASES["crlf"][0])

    assert document.position_of(("list", 1)) == Position(4, 3)
    assert document.position_of(("object", "n")) == Position(12, 3)


def test_document_without_source_positions():
    document = TfvarsDocument("hand-made", {"a": 1})

    assert document.position_of(("a",)) == Position(1, 1)


# --- Files


def test_load_reads_path_objects(tmp_path):
    path = tmp_path / "prod.tfvars"
    path.write_text('region = "eu-west-1"\n', encoding="utf-8")

    document = load_tfvars(path)

    assert document.path == str(path)
    assert document.values == {"region": "eu-west-1"}


def test_load_invalid_utf8_is_diagnostic(tmp_path):
    path = tmp_path / "latin1.tfvars"
    path.write_bytes('project = "x"\nowner = "Zoë Ångström"\n'.encode("latin-1"))

    with pytest.raises(TfvarsSyntaxError) as caught:
        load_tfvars(path)

    _assert_diagnostic(caught.value.diagnostics[0], 2, 12, ["not valid UTF-8", "0xEB"])


def test_load_invalid_utf8_after_byte_order_mark(tmp_path):
    path = tmp_path / "bom.tfvars"
    path.write_bytes(b'\xef\xbb\xbfa = "\xff"\n')

    with pytest.raises(TfvarsSyntaxError) as caught:
        load_tfvars(path)

    _assert_diagnostic(caught.value.diagnostics[0], 1, 6, ["0xFF"])


def test_load_missing_file_is_diagnostic(tmp_path):
    path = tmp_path / "missing.tfvars"

    with pytest.raises(TfvarsSyntaxError) as caught:
        load_tfvars(path)

    diagnostic = caught.value.diagnostics[0]
    assert diagnostic.path == str(path)
    assert "Cannot read the file" in diagnostic.message


def test_parse_many_typical_files():
    # 1,000 files of the size of a typical deployment file, so a slow scanner shows here.
    texts = [_typical_file(number) for number in range(1000)]

    documents = [parse_tfvars(text) for text in texts]

    assert [document.values["replicas"] for document in documents] == list(range(1000))


def _typical_file(number: int) -> str:
    return f"""# Deployment settings for service {number}
project     = "svc-{number}"
environment = "production"
region      = "eu-west-1"
replicas    = {number}
cpu_limit   = 0.5
enabled     = true

tags = {{
  CostCentre = "cc-{number}"
  Team       = "platform" # owning team
}}

s3_buckets = {{
  raw = {{
    versioning     = true
    lifecycle_days = 365
    readers        = ["analytics", "ml-platform", /* legacy */ "reports"]
  }}
  curated = {{ versioning = false, lifecycle_days = 30 }}
}}

allowed_cidrs = [
  "10.0.0.0/16",
  "10.1.0.0/16",
]

description = <<-EOT
  Service {number}, managed by the orchestrator.
  The escape $${{literal}} stays.
EOT
"""


# --- Terraform as the reference


def _terraform_environment(folder: Path) -> dict[str, str]:
    """Build an environment in which Terraform reads no user settings and calls no server."""
    home = folder / "home"
    home.mkdir()
    cli_config = folder / "terraformrc"
    cli_config.write_text("")
    return {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "TF_CLI_CONFIG_FILE": str(cli_config),
        "CHECKPOINT_DISABLE": "1",
        "TF_IN_AUTOMATION": "1",
        "TF_INPUT": "0",
    }


def _terraform(arguments: list[str], folder: Path, environment: dict[str, str]):
    if shutil.which("terraform", path=environment["PATH"]) is None:
        pytest.fail("terraform is not on PATH; install it or deselect with -m 'not terraform'")
    return subprocess.run(
        ["terraform", *arguments],
        cwd=folder,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _terraform_values(var_file: Path, names: list[str], folder: Path) -> dict[str, object]:
    """Apply a configuration that outputs each variable, and return Terraform's values."""
    configuration = ['terraform {\n  backend "local" {}\n}\n']
    for name in names:
        configuration.append(
            f'variable "{name}" {{\n  type = any\n}}\n'
            f'output "{name}" {{\n  value = var.{name}\n}}\n'
        )
    (folder / "main.tf").write_text("".join(configuration))
    environment = _terraform_environment(folder)

    init = _terraform(["init", "-input=false", "-no-color"], folder, environment)
    assert init.returncode == 0, init.stderr
    apply = _terraform(
        ["apply", "-auto-approve", "-input=false", "-no-color", f"-var-file={var_file}"],
        folder,
        environment,
    )
    assert apply.returncode == 0, apply.stdout + apply.stderr
    assert "undeclared variable" not in apply.stdout + apply.stderr
    output = _terraform(["output", "-json", "-no-color"], folder, environment)
    assert output.returncode == 0, output.stderr

    # Terraform stores no output whose value is null.
    outputs = json.loads(output.stdout)
    return {name: outputs[name]["value"] if name in outputs else None for name in names}


def _comparable(value):
    """Tag each value with its Terraform type, so True and 1 differ but 1 and 1.0 match."""
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, (int, float)):
        return ("number", value)
    if isinstance(value, list):
        return ("list", [_comparable(item) for item in value])
    if isinstance(value, dict):
        return ("object", {key: _comparable(item) for key, item in value.items()})
    return (type(value).__name__, value)


def _terraform_cases():
    cases = [pytest.param(DATA / "valid" / name, id=name) for name in sorted(VALID_CASES)]
    cases += [pytest.param(name, id=name) for name in sorted(TRICKY_CASES)]
    return cases


@pytest.mark.terraform
@pytest.mark.parametrize("case", _terraform_cases())
def test_values_match_terraform(case, tmp_path):
    if isinstance(case, Path):
        var_file = case
        text = case.read_text(encoding="utf-8")
    else:
        text = TRICKY_CASES[case][0]
        var_file = tmp_path / f"{case}.tfvars"
        var_file.write_bytes(text.encode("utf-8"))
    values = parse_tfvars(text).values

    work_folder = tmp_path / "work"
    work_folder.mkdir()
    expected = _terraform_values(var_file, sorted(values), work_folder)

    assert _comparable(values) == _comparable(expected)


def _rejection_texts() -> dict[str, bytes]:
    texts = {path.stem: path.read_bytes() for path in sorted((DATA / "invalid").glob("*.tfvars"))}
    for name, text, *_ in ERROR_CASES + STRICTER_THAN_TERRAFORM_CASES:
        texts[name] = text.encode("utf-8")
    return texts


@pytest.fixture(scope="module")
def terraform_workspace(tmp_path_factory):
    """Return an initialized folder, with its environment, that declares every variable name.

    Terraform evaluates only the values of declared variables, so an undeclared ``a = yes``
    would pass. Each variable defaults to null, so a file need not set all of them.
    """
    folder = tmp_path_factory.mktemp("terraform-workspace")
    names = set()
    for text in _rejection_texts().values():
        names.update(re.findall(r"(?m)^[ \t]*([A-Za-z_][\w-]*)", text.decode("utf-8", "replace")))
    configuration = ['terraform {\n  backend "local" {}\n}\n']
    for name in sorted(names):
        configuration.append(f'variable "{name}" {{\n  type    = any\n  default = null\n}}\n')
    (folder / "main.tf").write_text("".join(configuration))
    environment = _terraform_environment(folder)
    init = _terraform(["init", "-input=false", "-no-color"], folder, environment)
    assert init.returncode == 0, init.stderr
    return folder, environment


def _plan_with_var_file(name: str, workspace, tmp_path):
    folder, environment = workspace
    var_file = tmp_path / f"{name}.tfvars"
    var_file.write_bytes(_rejection_texts()[name])
    return _terraform(
        ["plan", "-input=false", "-lock=false", "-no-color", f"-var-file={var_file}"],
        folder,
        environment,
    )


@pytest.mark.terraform
@pytest.mark.parametrize(
    "name", [Path(case[0]).stem for case in INVALID_CASES] + [case[0] for case in ERROR_CASES]
)
def test_terraform_rejects_error_cases(name, terraform_workspace, tmp_path):
    plan = _plan_with_var_file(name, terraform_workspace, tmp_path)

    assert plan.returncode != 0
    assert f"{name}.tfvars" in plan.stderr


@pytest.mark.terraform
@pytest.mark.parametrize("name", [case[0] for case in STRICTER_THAN_TERRAFORM_CASES])
def test_terraform_accepts_stricter_cases(name, terraform_workspace, tmp_path):
    # If Terraform starts rejecting one of these, move it to ERROR_CASES.
    plan = _plan_with_var_file(name, terraform_workspace, tmp_path)

    assert plan.returncode == 0, plan.stderr
