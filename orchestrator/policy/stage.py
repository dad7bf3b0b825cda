"""The policy stage of a run: OPA/Rego per shard in-process, Checkov once per batch of shards.

A policy engine error, a Rego parse error, a policy set with zero rules, or a Checkov crash is
a failure of the shards it concerns, never a pass.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import OrchestratorError

logger = logging.getLogger(__name__)


class PolicyFailed(OrchestratorError):
    """A shard's plan broke a policy or could not be checked."""


@dataclass
class PolicyVerdict:
    """Findings of the policy stage for one shard."""

    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    opa_rules: int = 0
    checkov_passed: int = 0
    checkov_failed: int = 0
    checkov_soft_failed: int = 0

    @property
    def passed(self) -> bool:
        return not self.failures and not self.errors

    @property
    def status(self) -> str:
        if self.errors:
            return "error"
        if self.failures:
            return "failed"
        return "passed with warnings" if self.warnings else "passed"

    def as_dict(self) -> dict:
        return {
            "status": self.status,
            "failures": self.failures,
            "warnings": self.warnings,
            "errors": self.errors,
            "opa_rules": self.opa_rules,
            "checkov": {"passed": self.checkov_passed, "failed": self.checkov_failed, "soft_failed": self.checkov_soft_failed},
        }

    def describe(self) -> str:
        """Return the failures and errors as text for the shard's error field."""
        return "\n".join([f"policy error: {e}" for e in self.errors] + [f"policy: {f}" for f in self.failures])


class PolicyStage:
    """Policies of one run: the Rego policy set is parsed once, Checkov is set up once."""

    def __init__(self, policy_dir: Path, tools_dir: Path, settings):
        self.settings = settings
        self.policy_set = None
        self.checkov_binary: Path | None = None
        self._lock = threading.Lock()
        if settings.opa:
            from .opa import load_policies

            self.policy_set = load_policies(policy_dir) if policy_dir.is_dir() else None
            if self.policy_set is None:
                raise OrchestratorError(f"policy folder {policy_dir} does not exist; create it with Rego policies or set policy.opa = false")
        if settings.checkov:
            from .checkov import ensure_checkov

            self.checkov_binary = ensure_checkov(tools_dir)

    def evaluate_opa(self, plan_json: Path, metadata: dict, verdict: PolicyVerdict) -> None:
        """Evaluate the Rego policies against one plan; record findings in ``verdict``."""
        if self.policy_set is None:
            return
        from .opa import PolicyEngineError, build_policy_input

        plan = json.loads(plan_json.read_text(encoding="utf-8"))
        try:
            result = self.policy_set.evaluate(build_policy_input(plan, metadata))
        except PolicyEngineError as error:
            verdict.errors.append(f"OPA: {error}")
            return
        verdict.opa_rules = result.rules_evaluated
        verdict.failures += [f"{f.package}.{f.rule}: {f.message}" for f in result.failures]
        verdict.warnings += [f"{f.package}.{f.rule}: {f.message}" for f in result.warnings]

    def scan_checkov(self, plans: dict[str, Path]) -> dict:
        """Scan many plan files with one Checkov process; return a result per shard id."""
        from .checkov import run_checkov

        return run_checkov(
            self.checkov_binary,
            plans,
            skip_checks=tuple(self.settings.checkov_skip),
            soft_fail_checks=tuple(self.settings.checkov_soft_fail),
            hard_fail_threshold=self.settings.checkov_severity_threshold or None,
        )

    @staticmethod
    def record_checkov(result, verdict: PolicyVerdict) -> None:
        if result is None:
            return
        if result.error:
            verdict.errors.append(f"Checkov: {result.error}")
        verdict.checkov_passed = result.passed_count
        verdict.checkov_failed = len(result.failed_checks)
        verdict.checkov_soft_failed = len(result.soft_failed)
        verdict.failures += [f"checkov {f.check_id} ({f.check_name}) on {f.resource_address}" for f in result.failed_checks]
        verdict.warnings += [f"checkov {f.check_id} ({f.check_name}) on {f.resource_address} (soft fail)" for f in result.soft_failed]
