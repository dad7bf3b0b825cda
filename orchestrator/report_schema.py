"""Validation of the JSON run report against ``schemas/report.schema.json``."""

from __future__ import annotations

import re

import jsonschema

from .settings import load_schema

SCHEMA_NAME = "report.schema.json"

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def json_path(parts) -> str:
    """Format a sequence of keys and indexes as a JSONPath such as ``$.shards[0].counts.add``."""
    path = "$"
    for part in parts:
        if isinstance(part, int):
            path += f"[{part}]"
        elif _IDENTIFIER.match(part):
            path += f".{part}"
        else:
            # Keys such as the status "no changes" under totals need the bracket form.
            path += f"[{part!r}]"
    return path


def _sort_key(parts: list) -> tuple:
    # Indexes sort as numbers, so $.shards[2] comes before $.shards[10].
    return tuple((0, part, "") if isinstance(part, int) else (1, 0, part) for part in parts)


def _problems_of(error: jsonschema.ValidationError) -> list[tuple[list, str]]:
    """Return (path, message) pairs for one error, with each missing or unknown key in its own path."""
    where = list(error.absolute_path)
    if error.validator == "required" and isinstance(error.instance, dict):
        missing = [name for name in error.validator_value if name not in error.instance]
        return [(where + [name], "missing") for name in missing]
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = error.schema.get("properties", {})
        unknown = [name for name in error.instance if name not in known]
        return [(where + [name], f"unknown property; known properties: {', '.join(sorted(known))}") for name in unknown]
    return [(where, error.message)]


def report_problems(data: object) -> list[str]:
    """Return one line per place where ``data`` does not match the report schema, ordered by path."""
    validator = jsonschema.Draft202012Validator(load_schema(SCHEMA_NAME))
    found: dict[str, list] = {}
    for error in validator.iter_errors(data):
        for parts, message in _problems_of(error):
            # jsonschema yields one "required" error per missing key, and each one lists them all here.
            found.setdefault(f"{json_path(parts)}: {message}", parts)
    return sorted(found, key=lambda line: (_sort_key(found[line]), line))


def validate_report(data: dict) -> None:
    """Raise ValueError listing every place where ``data`` does not match the report schema."""
    problems = report_problems(data)
    if problems:
        raise ValueError(f"the run report does not match {SCHEMA_NAME} ({len(problems)} problem(s)):\n  " + "\n  ".join(problems))
