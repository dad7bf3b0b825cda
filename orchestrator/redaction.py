"""Redaction of everything shown to people: one redactor for console, logs and reports.

It masks values under secret-like keys, well-known credential patterns and private key
blocks, line by line, and keeps the rest of each line intact so that output stays readable.
"""

from __future__ import annotations

import re
import threading

MASK = "(redacted)"

_SECRET_KEY_WORDS = r"(?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key|private[_-]?key|credential|auth)"

# `"DB_PASSWORD" = "value"`, `db_password: value`, `ci_secret = "value"`, also with `old -> new`.
_KEY_VALUE = re.compile(
    r'(?P<key>"?[\w.-]*' + _SECRET_KEY_WORDS + r'[\w.-]*"?\s*[:=]\s*)(?P<value>"[^"]*"(?:\s*->\s*"[^"]*")?|[^\s,}]+)',
    re.IGNORECASE,
)
_PATTERNS = [
    re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16}\b"),  # AWS access key ids
    re.compile(r"(?<![A-Za-z0-9/+])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])(?=.*(?:secret|key))", re.IGNORECASE),
    re.compile(r"\b(?:ghp|gho|ghu|ghs|ghr|github_pat)_[A-Za-z0-9_]{20,}\b"),  # GitHub tokens
    re.compile(r"\b(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{10,}\b"),  # Stripe-style keys
    re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}\b"),  # Slack tokens
    re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\b"),  # JSON web tokens
    re.compile(r"(?i)(?P<keep>bearer )[A-Za-z0-9._~+/=-]{8,}"),
    re.compile(r"(?P<keep>://[^/\s:@]+:)[^@\s/]+(?=@)"),  # the password of user:password@ in URLs
    re.compile(r"(?i)(?P<keep>[?&](?:token|key|secret|password|sig|signature)=)[^&\s\"']+"),
]
_PRIVATE_KEY_BEGIN = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")
_PRIVATE_KEY_END = re.compile(r"-----END [A-Z ]*PRIVATE KEY-----")


def _replacement(match: re.Match) -> str:
    """Keep the named group ``keep`` (a prefix such as ``Bearer ``) and mask the rest."""
    kept = match.groupdict().get("keep") or ""
    return kept + MASK


class Redactor:
    """Mask secrets in text; keeps state across lines for multi-line private key blocks."""

    def __init__(self, extra_patterns: list[str] | None = None, known_secrets: list[str] | None = None):
        self.patterns = list(_PATTERNS) + [re.compile(p) for p in (extra_patterns or [])]
        self.known_secrets = sorted({s for s in (known_secrets or []) if len(s) >= 4}, key=len, reverse=True)
        self._inside_key_block = False
        self._lock = threading.Lock()

    def add_secret(self, value: str) -> None:
        """Mask this exact value from now on (a sensitive variable's value, for example)."""
        if len(value) >= 4 and value not in self.known_secrets:
            self.known_secrets = sorted(self.known_secrets + [value], key=len, reverse=True)

    def line(self, text: str) -> str:
        """Redact one line of streamed output."""
        with self._lock:
            if self._inside_key_block:
                if _PRIVATE_KEY_END.search(text):
                    self._inside_key_block = False
                    return text
                return MASK
            if _PRIVATE_KEY_BEGIN.search(text) and not _PRIVATE_KEY_END.search(text):
                self._inside_key_block = True
                return text
        return self._mask(text)

    def text(self, text: str) -> str:
        """Redact a whole block of text."""
        block_redactor = Redactor(extra_patterns=[p.pattern for p in self.patterns[len(_PATTERNS):]], known_secrets=self.known_secrets)
        return "\n".join(block_redactor.line(line) for line in text.split("\n"))

    def _mask(self, text: str) -> str:
        for secret in self.known_secrets:
            text = text.replace(secret, MASK)
        text = _KEY_VALUE.sub(lambda m: m.group("key") + MASK, text)
        for pattern in self.patterns:
            text = pattern.sub(_replacement, text)
        return text
