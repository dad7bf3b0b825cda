"""Matrix: the selected shards as GitHub Actions matrices, one per dependency level.

A workflow runs one job per level, each with a ``strategy.matrix`` of that level's shards, and
each level job ``needs`` the one before it. Every shard's prerequisites are then applied in an
earlier job, and the shards of one level run on parallel runners, each with
``invoke apply --deployment <shard id>``. State locking keeps two runners off one state.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Mapping, TextIO

from .discovery import Shard
from .errors import ConfigurationError, SelectionError
from .runs import EXIT_OK, load_and_validate
from .scheduler import find_cycle
from .selection import SelectionRequest, select_shards, shard_dependencies
from .settings import Settings
from .validation import validation_warnings

logger = logging.getLogger(__name__)

# The number of level jobs in the shipped apply workflow (level0, level1, level2).
DEFAULT_MAX_LEVELS = 3

# GitHub documents that a job matrix generates at most 256 jobs per workflow run (Actions
# usage limits), so a larger level would fail the whole workflow run.
# NOTE: the limit is checked per level. GitHub's wording leaves open whether the matrices of
# all level jobs in one run count against it together.
MAX_MATRIX_JOBS = 256


def dependency_levels(shards: list[Shard], dependencies: Mapping[str, set[str]]) -> list[list[Shard]]:
    """Group shards into levels: level 0 has no selected prerequisite, level k only earlier ones.

    A shard lands in the level after its deepest prerequisite (longest-path layering), so a
    level job can start once the previous level job has finished. Prerequisites that are not
    among ``shards`` are ignored. Each level is sorted by shard id.
    """
    by_id = {shard.id: shard for shard in shards}
    waiting_on = {shard_id: set(dependencies.get(shard_id, ())) & by_id.keys() for shard_id in by_id}

    levels: list[list[Shard]] = []
    placed: set[str] = set()
    while len(placed) < len(by_id):
        # Every shard whose prerequisites are all placed goes into this level.
        ready = sorted(shard_id for shard_id in by_id if shard_id not in placed and waiting_on[shard_id] <= placed)
        if not ready:
            remaining = {shard_id: waiting_on[shard_id] - placed for shard_id in by_id if shard_id not in placed}
            cycle = find_cycle(remaining) or sorted(remaining)
            raise ConfigurationError(f"shard dependency cycle: {' -> '.join(cycle)}; check depends_on in the services' service.json files")
        levels.append([by_id[shard_id] for shard_id in ready])
        placed.update(ready)
    return levels


def longest_chain(levels: list[list[Shard]], dependencies: Mapping[str, set[str]]) -> list[str]:
    """Return the ids of one chain of prerequisites that runs through every level, first to last."""
    level_of = {shard.id: index for index, level in enumerate(levels) for shard in level}
    chain = [levels[-1][0].id]
    while level_of[chain[0]] > 0:
        # A shard in level k has at least one prerequisite in level k - 1, otherwise it would be in a lower level.
        below = level_of[chain[0]] - 1
        chain.insert(0, min(dependency for dependency in dependencies[chain[0]] if level_of.get(dependency) == below))
    return chain


def matrix_entry(shard: Shard) -> dict[str, str]:
    """Return the matrix variables of one job: the shard id and where it deploys."""
    return {
        "shard": shard.id,
        "deployment": shard.deployment.id,
        "account": shard.account.name,
        "region": shard.region,
        "service": shard.service.name,
    }


def build_matrix(shards: list[Shard], dependencies: Mapping[str, set[str]], max_levels: int) -> dict:
    """Build the JSON-serialisable matrix document for a workflow with ``max_levels`` level jobs.

    The result has ``levels`` (levels in use), and for every k below ``max_levels`` a key
    ``level<k>`` with ``{"include": [...]}`` and a boolean ``has_level<k>``. An empty level
    still has its key, because GitHub fails a matrix job whose include list is empty, so the
    workflow skips that job when ``has_level<k>`` is false.

    Raises ConfigurationError when the shards need more levels than ``max_levels`` or when a
    level has more shards than GitHub runs from one matrix.
    """
    if max_levels < 1:
        raise ConfigurationError(f"--max-levels must be at least 1, got {max_levels}")

    levels = dependency_levels(shards, dependencies)
    if len(levels) > max_levels:
        chain = longest_chain(levels, dependencies)
        raise ConfigurationError(
            f"the selected shards need {len(levels)} dependency levels, but the matrix has {max_levels} "
            f"(--max-levels {max_levels}): {' -> '.join(chain)} must apply one after another. "
            f"Pass --max-levels {len(levels)} and add level jobs up to level{len(levels) - 1} to the apply workflow, "
            f"each needing the one before it"
        )
    for index, level in enumerate(levels):
        if len(level) > MAX_MATRIX_JOBS:
            raise ConfigurationError(
                f"dependency level {index} has {len(level)} shards, but GitHub Actions creates at most {MAX_MATRIX_JOBS} jobs "
                f"from one matrix; narrow the selection (--account, --service, --region) and apply the rest in another run, "
                f"or apply this change from one job with invoke apply, which runs the shards in parallel itself"
            )

    document: dict = {"levels": len(levels)}
    for index in range(max_levels):
        level = levels[index] if index < len(levels) else []
        document[f"level{index}"] = {"include": [matrix_entry(shard) for shard in level]}
        document[f"has_level{index}"] = bool(level)
    return document


def github_output_lines(document: dict) -> list[str]:
    """Return one ``key=value`` line per key, each value as compact JSON.

    The ``$GITHUB_OUTPUT`` file takes ``name=value`` lines, and compact JSON never contains a
    newline, so every value fits on its line. Booleans become ``true``/``false``, which a
    workflow compares as strings (``needs.matrix.outputs.has_level1 == 'true'``).
    """
    return [f"{key}={json.dumps(value, separators=(',', ':'))}" for key, value in document.items()]


def describe_levels(document: dict, max_levels: int) -> str:
    """Return a short human summary: how many shards are in which level."""
    parts = []
    for index in range(max_levels):
        shard_ids = [entry["shard"] for entry in document[f"level{index}"]["include"]]
        if shard_ids:
            parts.append(f"level{index}: {', '.join(shard_ids)}")
    total = sum(len(document[f"level{index}"]["include"]) for index in range(max_levels))
    return f"{total} shard(s) in {document['levels']} level(s)" + ("; " + "; ".join(parts) if parts else "")


def matrix_main(settings: Settings, request: SelectionRequest, max_levels: int, output_path: Path | None, stream: TextIO) -> int:
    """Select shards and write their matrix: compact JSON to ``stream``, or ``key=value`` lines to ``output_path``.

    With ``output_path`` (the file named by ``$GITHUB_OUTPUT``) the lines are appended, because
    the step may write other outputs to that file, and ``stream`` gets a one-line summary.
    A change that affects no shard gives a matrix with every level empty.
    """
    inventory = load_and_validate(settings)
    for warning in validation_warnings(inventory):
        # A warning on stdout would corrupt the JSON that a workflow captures with $(...).
        logger.warning("%s", warning)

    shards = select_shards(inventory, settings, request)
    if not shards and not request.by_change:
        raise SelectionError(f"{request.describe()} selects no shard; list shards with: invoke shards")

    document = build_matrix(shards, shard_dependencies(shards), max_levels)

    if output_path is None:
        stream.write(json.dumps(document, separators=(",", ":")) + "\n")
        return EXIT_OK

    try:
        with output_path.open("a", encoding="utf-8") as output:
            for line in github_output_lines(document):
                output.write(line + "\n")
    except OSError as error:
        raise ConfigurationError(f"cannot write the matrix to {output_path}: {error.strerror}; pass a writable file, in GitHub Actions \"$GITHUB_OUTPUT\"") from error
    stream.write(describe_levels(document, max_levels) + "\n")
    return EXIT_OK
