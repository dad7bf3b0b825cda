"""Counts of a plan's resource changes, read from ``terraform show -json`` output."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class ChangeCounts:
    add: int = 0
    change: int = 0
    destroy: int = 0
    replace: int = 0
    importing: int = 0
    move: int = 0
    forget: int = 0

    @property
    def total(self) -> int:
        return self.add + self.change + self.destroy + self.importing + self.move + self.forget

    def as_dict(self) -> dict:
        return asdict(self)


def count_changes(plan: dict) -> ChangeCounts:
    """Count resource changes the way Terraform's plan summary does, plus replacements, imports, moves and forgotten resources.

    A replacement adds one and destroys one (as in Terraform's "N to add, M to destroy") and is
    also counted in ``replace``. Data-source reads are not changes.
    """
    counts = ChangeCounts()
    for change in plan.get("resource_changes", []):
        if change.get("mode") == "data":
            continue
        details = change.get("change", {})
        actions = details.get("actions", [])
        if details.get("importing"):
            counts.importing += 1
        if change.get("previous_address") and change.get("previous_address") != change.get("address"):
            counts.move += 1

        if actions in (["delete", "create"], ["create", "delete"]):
            counts.replace += 1
            counts.add += 1
            counts.destroy += 1
        elif actions == ["create"]:
            counts.add += 1
        elif actions == ["update"]:
            counts.change += 1
        elif actions == ["delete"]:
            counts.destroy += 1
        elif actions == ["forget"]:
            counts.forget += 1
    return counts
