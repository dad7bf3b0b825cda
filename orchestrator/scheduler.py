"""A worker pool over a dependency graph: independent nodes run in parallel, dependents after.

Generic and free of Terraform: nodes are ids, ``work`` runs one node and returns an outcome.
When a node fails, every node that depends on it (directly or not) is skipped with the
reason; unrelated nodes carry on. Once ``cancelled`` is set, nodes not yet started are
skipped as interrupted.
"""

from __future__ import annotations

import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Callable, Hashable, Mapping

SUCCEEDED = "succeeded"
FAILED = "failed"
SKIPPED = "skipped"


@dataclass
class Outcome:
    status: str  # SUCCEEDED, FAILED or SKIPPED
    detail: str = ""
    value: object = None


def find_cycle(dependencies: Mapping[Hashable, set]) -> list | None:
    """Return one dependency cycle as a list of nodes, or None when the graph has none."""
    state: dict = {}
    for start in dependencies:
        if state.get(start):
            continue
        stack = [(start, iter(dependencies.get(start, ())))]
        trail = [start]
        state[start] = "active"
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = "done"
                stack.pop()
                trail.pop()
            elif state.get(child) == "active":
                return trail[trail.index(child):] + [child]
            elif not state.get(child):
                state[child] = "active"
                stack.append((child, iter(dependencies.get(child, ()))))
                trail.append(child)
    return None


def run_graph(
    nodes: list,
    dependencies: Mapping[Hashable, set],
    work: Callable[[Hashable, dict], Outcome],
    workers: int,
    cancelled: threading.Event | None = None,
    on_skip: Callable[[Hashable, Outcome], None] | None = None,
) -> dict:
    """Run ``work(node, prerequisite_outcomes)`` for each node, respecting ``dependencies``.

    ``dependencies[node]`` is the set of nodes that must succeed first; dependencies on nodes
    outside ``nodes`` are ignored. Returns the outcome of every node.
    """
    known = set(nodes)
    waiting_on = {node: {d for d in dependencies.get(node, set()) if d in known} for node in nodes}
    cycle = find_cycle(waiting_on)
    if cycle:
        raise ValueError(f"dependency cycle: {' -> '.join(map(str, cycle))}")

    dependents: dict = {node: set() for node in nodes}
    for node, prerequisites in waiting_on.items():
        for prerequisite in prerequisites:
            dependents[prerequisite].add(node)

    outcomes: dict = {}
    order = {node: index for index, node in enumerate(nodes)}
    ready = [node for node in nodes if not waiting_on[node]]
    running: dict[Future, Hashable] = {}
    cancelled = cancelled or threading.Event()

    def skip(node, outcome: Outcome) -> None:
        if node in outcomes:
            return
        outcomes[node] = outcome
        if on_skip:
            on_skip(node, outcome)
        for dependent in sorted(dependents[node], key=order.get):
            skip(dependent, Outcome(SKIPPED, f"prerequisite {node} did not succeed"))

    def finish(node, outcome: Outcome) -> None:
        outcomes[node] = outcome
        for dependent in sorted(dependents[node], key=order.get):
            if dependent in outcomes:
                continue
            if outcome.status != SUCCEEDED:
                skip(dependent, Outcome(SKIPPED, f"prerequisite {node} {outcome.status}"))
                continue
            waiting_on[dependent].discard(node)
            if not waiting_on[dependent]:
                ready.append(dependent)

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="shard") as pool:
        while ready or running:
            ready.sort(key=order.get)
            while ready and len(running) < workers:
                node = ready.pop(0)
                if node in outcomes:
                    continue
                if cancelled.is_set():
                    skip(node, Outcome(SKIPPED, "not started: the run was interrupted"))
                    continue
                prerequisites = {p: outcomes[p] for p in dependencies.get(node, set()) if p in outcomes}
                running[pool.submit(work, node, prerequisites)] = node

            if not running:
                continue
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for future in done:
                node = running.pop(future)
                try:
                    outcome = future.result()
                except Exception as error:  # noqa: BLE001 - a crash in one node must not stop the others
                    outcome = Outcome(FAILED, f"internal error: {type(error).__name__}: {error}")
                finish(node, outcome)
    return outcomes
