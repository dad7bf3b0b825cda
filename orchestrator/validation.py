"""Validation before any cloud call: routing rules, state-key collisions and service schemas.

Syntax errors and unknown keys are found during discovery, because they decide how a file
splits into shards. This module adds the checks that need the whole inventory. Every problem is a
diagnostic with file, line and column, and all of them are reported in one run.
"""

from __future__ import annotations

import difflib

import jsonschema

from .discovery import COMMON_KEYS, Inventory, Shard
from .references import check_references
from .tfvars import Diagnostic


def check_routing(inventory: Inventory) -> list[Diagnostic]:
    """Check that each deployment file's account id and region agree with its account folder."""
    diagnostics = []
    for deployment in inventory.deployments:
        document = deployment.document
        account = deployment.account
        declared_id = document.values.get("account_id")
        if declared_id is not None and str(declared_id) != account.account_id:
            position = document.position_of(("account_id",))
            diagnostics.append(Diagnostic(
                deployment.path, position.line, position.column,
                f"account_id {declared_id} does not match {account.path} ({account.account_id}); "
                f"a file under Accounts/{account.name}/ deploys only to that account, so fix the id or move the file",
            ))
        if deployment.region not in account.regions:
            position = document.position_of(("region",)) if "region" in document.values else document.position_of(())
            diagnostics.append(Diagnostic(
                deployment.path, position.line, position.column,
                f"region {deployment.region} is not allowed for account {account.name} (allowed: {', '.join(account.regions)}); "
                f"use one of those or add it to regions in {account.path}",
            ))
    return diagnostics


def check_state_key_collisions(inventory: Inventory) -> list[Diagnostic]:
    """Two shards writing one state object would overwrite each other; report every pair."""
    first_by_key: dict[str, Shard] = {}
    diagnostics = []
    for shard in inventory.shards:
        other = first_by_key.get(shard.state_key)
        if other is None:
            first_by_key[shard.state_key] = shard
            continue
        position = shard.deployment.document.position_of(("project",)) if "project" in shard.deployment.document.values else shard.deployment.document.position_of(())
        diagnostics.append(Diagnostic(
            shard.deployment.path, position.line, position.column,
            f"shard {shard.id} has the same state key {shard.state_key} as {other.id} ({other.deployment.path}); "
            "two files cannot share one state, so give one of them another project name",
        ))
    return diagnostics


def _schema_message(error: jsonschema.ValidationError, key_path: tuple) -> str:
    where = ".".join(str(part) for part in key_path)
    if error.validator == "additionalProperties":
        known = sorted(error.schema.get("properties", {}))
        unknown = [name for name in error.instance if name not in error.schema.get("properties", {})]
        messages = []
        for name in unknown:
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            hint = f", did you mean {close[0]}?" if close else f"; known properties: {', '.join(known)}"
            messages.append(f"{where + '.' if where else ''}{name}: unknown property{hint}")
        return "; ".join(messages)
    return f"{where}: {error.message}"


def check_service_values(inventory: Inventory) -> list[Diagnostic]:
    """Validate each shard's values against its service's JSON Schema, at the tfvars line."""
    diagnostics = []
    for shard in inventory.shards:
        schema = shard.service.value_schema
        if not schema:
            continue
        owned = {key: value for key, value in shard.values.items() if key not in COMMON_KEYS and key != "repo_root"}
        validator = jsonschema.Draft202012Validator(schema)
        for error in sorted(validator.iter_errors(owned), key=lambda e: list(e.absolute_path)):
            key_path = tuple(error.absolute_path)
            if error.validator == "additionalProperties":
                unknown = [name for name in error.instance if name not in error.schema.get("properties", {})]
                position = shard.deployment.document.position_of(key_path + (unknown[0],)) if unknown else shard.deployment.document.position_of(key_path)
            else:
                position = shard.deployment.document.position_of(key_path)
            diagnostics.append(Diagnostic(shard.deployment.path, position.line, position.column, _schema_message(error, key_path)))
    return diagnostics


def check_packages(inventory: Inventory) -> list[Diagnostic]:
    """Warn about entries of a packaged map without a source folder: their shard cannot be planned.

    A warning, not an error: the file is valid for Terraform, and the shard fails on its own
    with the same message while the other shards go on.
    """
    diagnostics = []
    for shard in inventory.shards:
        for package in shard.service.packages:
            entries = shard.values.get(package.key)
            if not isinstance(entries, dict):
                continue
            for name, entry in entries.items():
                if isinstance(entry, dict) and entry.get(package.source_field):
                    continue
                position = shard.deployment.document.position_of((package.key, name))
                diagnostics.append(Diagnostic(
                    shard.deployment.path, position.line, position.column,
                    f"{package.key}.{name}: {package.source_field} is missing; the {shard.service.name} service packages that folder "
                    "before plan, so set it to the folder of the source, relative to the repository root",
                ))
    return diagnostics


def check_file_references(inventory: Inventory, repo_root) -> list[Diagnostic]:
    """Check the files each deployment file names: present, inside the repo, valid policy JSON."""
    diagnostics = []
    for deployment in inventory.deployments:
        references = [ref for service in inventory.services.values() for ref in service.references]
        diagnostics += check_references(deployment.document, deployment.path, references, repo_root)
    return diagnostics


def validation_warnings(inventory: Inventory) -> list[Diagnostic]:
    """Return problems that do not stop a run: duplicate object keys, files that deploy nothing, unpackaged functions."""
    warnings = []
    for deployment in inventory.deployments:
        warnings += [Diagnostic(deployment.path, w.line, w.column, w.message) for w in getattr(deployment.document, "warnings", [])]
    with_shards = {shard.deployment.path for shard in inventory.shards}
    for deployment in inventory.deployments:
        if deployment.path not in with_shards:
            warnings.append(Diagnostic(deployment.path, 1, 1, "sets no service key, so it deploys nothing; add a service key such as s3_buckets, or remove the file"))
    warnings += check_packages(inventory)
    return sorted(warnings, key=lambda d: (d.path, d.line, d.column))


def validate_inventory(inventory: Inventory, repo_root=None) -> list[Diagnostic]:
    """Return every problem of the inventory, discovery's own included, in file order."""
    diagnostics = list(inventory.diagnostics)
    diagnostics += check_routing(inventory)
    diagnostics += check_state_key_collisions(inventory)
    diagnostics += check_service_values(inventory)
    if repo_root is not None:
        diagnostics += check_file_references(inventory, repo_root)
    unique = {(d.path, d.line, d.column, d.message): d for d in diagnostics}
    return sorted(unique.values(), key=lambda d: (d.path, d.line, d.column))
