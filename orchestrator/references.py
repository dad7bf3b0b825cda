"""Files that deployment files refer to: they must exist, lie inside the repository and, for
policy documents, be valid JSON with the shape of an IAM policy.

Which fields are references is declared per service in ``service.json`` under ``references``:
``{"key": "iam_roles", "field": "policy_files", "kind": "iam-policy"}`` means that each entry of
the ``iam_roles`` map has a ``policy_files`` field (a path or a list of paths) naming IAM
policy documents. Kinds: ``file``, ``directory``, ``iam-policy`` (identity policy: needs
Resource), ``iam-resource-policy`` (trust and key policies: needs Principal) and
``iam-policy-text`` (the field holds the JSON text itself, such as a heredoc).
"""

from __future__ import annotations

import json
from pathlib import Path

from .tfvars import Diagnostic, TfvarsDocument

POLICY_VERSIONS = ("2012-10-17", "2008-10-17")
POLICY_TOP_LEVEL_KEYS = {"Version", "Id", "Statement"}
STATEMENT_KEYS = {"Sid", "Effect", "Principal", "NotPrincipal", "Action", "NotAction", "Resource", "NotResource", "Condition"}


def iam_policy_problems(document: object, needs_principal: bool) -> list[str]:
    """Return what makes ``document`` not an IAM policy, as sentences; empty when it is one."""
    if not isinstance(document, dict):
        return ["an IAM policy is a JSON object with Version and Statement"]
    problems = [f"unknown top-level key {key!r} (allowed: Version, Id, Statement)" for key in document if key not in POLICY_TOP_LEVEL_KEYS]
    version = document.get("Version")
    if version is None:
        problems.append('Version is missing; use "2012-10-17" (without it IAM disables policy variables)')
    elif version not in POLICY_VERSIONS:
        problems.append(f'Version {version!r} is not valid; use "2012-10-17"')

    statements = document.get("Statement")
    if isinstance(statements, dict):
        statements = [statements]
    if not isinstance(statements, list) or not statements:
        problems.append("Statement is missing or empty; it must be a statement object or a non-empty list of them")
        return problems

    for index, statement in enumerate(statements):
        where = f"Statement[{index}]"
        if not isinstance(statement, dict):
            problems.append(f"{where} is not an object")
            continue
        problems += [f"{where}: unknown key {key!r}" for key in statement if key not in STATEMENT_KEYS]
        if statement.get("Effect") not in ("Allow", "Deny"):
            problems.append(f'{where}: Effect must be "Allow" or "Deny", not {statement.get("Effect")!r}')
        if "Action" not in statement and "NotAction" not in statement:
            problems.append(f"{where}: Action (or NotAction) is missing")
        if needs_principal and "Principal" not in statement and "NotPrincipal" not in statement:
            problems.append(f"{where}: Principal is missing; trust and resource policies name who the statement applies to")
        if not needs_principal and "Resource" not in statement and "NotResource" not in statement:
            problems.append(f"{where}: Resource (or NotResource) is missing")
    return problems


def _paths_of(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [item for item in value if isinstance(item, str)]
    return []


def _check_path(relative: str, kind: str, repo_root: Path) -> tuple[Path | None, str | None]:
    """Resolve a repo-relative reference; return the path, or None and the problem."""
    if Path(relative).is_absolute() or relative.startswith("\\"):
        return None, f"{relative!r} is an absolute path; give it relative to the repository root"
    candidate = repo_root / relative
    resolved = candidate.resolve()
    if not resolved.is_relative_to(repo_root):
        return None, f"{relative!r} points outside the repository (through '..' or a link); use a file inside it"
    if not candidate.exists():
        return None, f"{relative!r} does not exist; create it or fix the path (relative to the repository root)"
    if kind == "directory" and not resolved.is_dir():
        return None, f"{relative!r} is not a folder"
    if kind != "directory" and not resolved.is_file():
        return None, f"{relative!r} is not a file"
    return resolved, None


def _json_file_problems(path: Path, relative: str, needs_principal: bool) -> tuple[list[str], Diagnostic | None]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        return [f"{relative} is not UTF-8 text"], None
    except json.JSONDecodeError as error:
        return [f"{relative} is not valid JSON: {error.msg} at line {error.lineno}, column {error.colno}"], Diagnostic(relative, error.lineno, error.colno, f"invalid JSON: {error.msg}")
    return [f"{relative}: {problem}" for problem in iam_policy_problems(document, needs_principal)], None


def check_references(document: TfvarsDocument, shown_path: str, references: list[dict], repo_root: Path) -> list[Diagnostic]:
    """Check every reference field of one deployment file; return one diagnostic per problem."""
    diagnostics: list[Diagnostic] = []
    values = document.values
    for reference in references:
        entries = values.get(reference["key"])
        if not isinstance(entries, dict):
            continue
        for name, entry in entries.items():
            if not isinstance(entry, dict) or entry.get(reference["field"]) is None:
                continue
            key_path = (reference["key"], name, reference["field"])
            position = document.position_of(key_path)
            field_name = ".".join(map(str, key_path))
            kind = reference["kind"]

            def report(message: str) -> None:
                diagnostics.append(Diagnostic(shown_path, position.line, position.column, f"{field_name}: {message}"))

            if kind == "iam-policy-text":
                text = entry[reference["field"]]
                try:
                    parsed = json.loads(text)
                except (TypeError, json.JSONDecodeError) as error:
                    report(f"is not valid JSON ({getattr(error, 'msg', error)}); it must be an IAM policy document")
                    continue
                for problem in iam_policy_problems(parsed, needs_principal=False):
                    report(problem)
                continue

            for relative in _paths_of(entry[reference["field"]]):
                path, problem = _check_path(relative, kind, repo_root)
                if problem:
                    report(problem)
                    continue
                if kind in ("iam-policy", "iam-resource-policy"):
                    problems, json_diagnostic = _json_file_problems(path, relative, needs_principal=kind == "iam-resource-policy")
                    for text in problems:
                        report(text)
                    if json_diagnostic:
                        diagnostics.append(json_diagnostic)
    return diagnostics
