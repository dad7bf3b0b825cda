"""The exception hierarchy of the orchestrator.

Every error raised on purpose derives from ``OrchestratorError``; only the CLI layer turns
them into exit codes and text.
"""


class OrchestratorError(Exception):
    """Base class of every error the orchestrator raises on purpose."""


class ConfigurationError(OrchestratorError):
    """Settings, account files or service descriptors are invalid or missing."""


class SelectionError(OrchestratorError):
    """The selection flags name something that does not exist or select nothing."""


class ValidationFailed(OrchestratorError):
    """One or more deployment files failed validation; ``diagnostics`` lists every problem."""

    def __init__(self, diagnostics):
        self.diagnostics = list(diagnostics)
        super().__init__(f"validation failed with {len(self.diagnostics)} error(s)")
