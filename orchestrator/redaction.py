"""Redaction of everything shown to people: one redactor for console, logs, reports and JSON.

The redactor masks the values Terraform marks sensitive (see ``secrets_from_plan``), values
under secret-like keys, well-known credential formats and private key blocks. It works line by
line and keeps the rest of each line, so output stays readable. When redaction raises an
exception, the caller gets ``WITHHELD`` instead of the input.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import quote, quote_plus

logger = logging.getLogger(__name__)

MASK = "(redacted)"
WITHHELD = "(output withheld: redaction failed)"

# Shorter known secrets would mask ordinary words and numbers all over the output.
MIN_SECRET_LENGTH = 4

# --- secret-like keys ------------------------------------------------------------------------

# A key is secret-like when its snake_case form contains one of these fragments...
_SECRET_KEY_FRAGMENTS = (
    "password", "passwd", "passphrase", "secret", "token", "credential",
    "api_key", "apikey", "access_key", "accesskey", "private_key", "privatekey",
    "connection_string", "connectionstring", "conn_str",
    "account_key", "master_key", "signing_key", "encryption_key", "session_key", "cookie",
)
# ... or one of these whole words: `auth` is a secret, `author` and `oauth_client_id` are not.
_SECRET_KEY_WORDS = frozenset({"auth", "authorization", "sig", "signature", "pwd"})
# A key ending in one of these names metadata about a secret, not the secret itself:
# secret_arn, token_count, password_length, access_key_id, kms_master_key_id, customer_master_key_spec.
_METADATA_SUFFIXES = tuple(
    "_" + suffix
    for suffix in (
        "arn", "arns", "name", "names", "id", "ids", "count", "length", "type", "version", "enabled",
        "ttl", "expiry", "expiration", "expires_at", "expires_in", "policy", "path", "file", "url",
        "uri", "endpoint", "age", "spec", "usage",
    )
)
# `type.name`, `data.type.name` or `module.x.type.name[...]`: the address of a resource whose
# type happens to contain a secret word (aws_iam_access_key.ci) is not a secret key.
_RESOURCE_ADDRESS = re.compile(
    r"(?:module\.[A-Za-z_][\w-]*(?:\[[^\]]*\])?\.)*(?:data\.)?[a-z][a-z0-9]*_[a-z0-9_]*\.[A-Za-z_][\w-]*(?:\[[^\]]*\])?"
)
_CAMEL_CASE_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_NON_ALPHANUMERIC = re.compile(r"[^a-z0-9]+")


@functools.lru_cache(maxsize=4096)
def is_secret_key(name: str) -> bool:
    """Return whether values under the key ``name`` are masked whole.

    Case, camelCase and the separators `-`, `_`, `.` and space do not matter: `DB_PASSWORD`,
    `clientSecret`, `X-Auth-Token` and `auth token` are all secret-like.
    """
    if _RESOURCE_ADDRESS.fullmatch(name):
        return False

    normalized = _NON_ALPHANUMERIC.sub("_", _CAMEL_CASE_BOUNDARY.sub("_", name).lower()).strip("_")
    if normalized.endswith(_METADATA_SUFFIXES):
        return False
    if any(fragment in normalized for fragment in _SECRET_KEY_FRAGMENTS):
        return True

    words = normalized.split("_")
    # A bare `PWD` is the shell's working directory, but `db_pwd` is a password.
    if words == ["pwd"]:
        return False
    return any(word in _SECRET_KEY_WORDS for word in words)


# --- patterns --------------------------------------------------------------------------------

# Credential formats masked wherever they appear. A named group `keep` is a prefix left visible.
_PATTERNS = [
    # AWS access key ids and other AWS unique ids.
    re.compile(r"\b(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AIPA|ANPA|ANVA|APKA|AROA|ASCA)[A-Z0-9]{16}\b"),
    # GitHub tokens: personal, OAuth, user-to-server, server-to-server, refresh, fine-grained.
    re.compile(r"\b(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{20,}\b|\bgithub_pat_[A-Za-z0-9_]{20,}\b"),
    re.compile(r"\bglpat-[A-Za-z0-9_-]{20,}"),  # GitLab personal access tokens
    re.compile(r"\bxox[abeoprs]-[A-Za-z0-9-]{10,}|\bxapp-\d-[A-Za-z0-9-]{10,}"),  # Slack tokens
    re.compile(r"(?P<keep>\bhooks\.slack\.com/(?:services|workflows|triggers)/)[\w/-]+"),  # Slack webhook paths
    re.compile(r"\b(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{10,}\b|\bwhsec_[A-Za-z0-9]{20,}"),  # Stripe keys
    re.compile(r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"),  # JSON web tokens
    re.compile(r"\bAIza[0-9A-Za-z_-]{35}(?![0-9A-Za-z_-])|\bGOCSPX-[A-Za-z0-9_-]{20,}"),  # Google API keys, OAuth client secrets
    re.compile(r"\bnpm_[A-Za-z0-9]{36}(?![A-Za-z0-9])"),  # npm access tokens
    re.compile(r"(?i)(?P<keep>\bbearer[ \t]+)[A-Za-z0-9._~+/=-]{8,}"),
    # An Authorization header: the scheme stays, everything after it up to a quote is masked,
    # because Basic, Digest and AWS4 credentials contain spaces and commas.
    re.compile(
        r"(?i)(?P<keep>\b(?:proxy-)?authorization\"?[ \t]*[:=][ \t]*\"?"
        r"(?:(?:bearer|basic|digest|token|negotiate|ntlm|aws4-hmac-sha256)[ \t]+)?)[^\s\"'][^\"'\n]*"
    ),
    # The password of scheme://user:password@host. The greedy run ends at the last `@`, so an
    # unescaped `@` inside the password is masked too.
    re.compile(r"(?P<keep>://[^/\s:@\"']*:)[^\s/?#\"']+(?=@)"),
]

# A 40-character AWS secret access key: base64 letters in both cases and a digit or `/` or `+`.
# Random text of that shape is rare, but it is only masked on lines that mention a key or secret.
_AWS_SECRET_KEY = re.compile(
    r"(?<![A-Za-z0-9/+])(?=[A-Za-z0-9/+]{0,39}[A-Z])(?=[A-Za-z0-9/+]{0,39}[a-z])(?=[A-Za-z0-9/+]{0,39}[0-9/+])"
    r"[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])"
)
_AWS_SECRET_KEY_CONTEXT = re.compile(r"secret|key|credential", re.IGNORECASE)

# A query string or connection string parameter: ?token=…, &sig=…, ;AccountKey=….
_QUERY_PARAMETER = re.compile(r"(?P<keep>[?&#;](?P<name>[A-Za-z_][\w.-]{0,63})=)[^&\s\"'#;]+")
# Parameter names that carry credentials in URLs without being secret-like keys elsewhere.
_SECRET_QUERY_NAMES = frozenset({"key", "code"})

_PRIVATE_KEY_BEGIN = re.compile(r"-----BEGIN(?: [A-Z0-9]+)* PRIVATE KEY(?: BLOCK)?-----")
_PRIVATE_KEY_END = re.compile(r"-----END(?: [A-Z0-9]+)* PRIVATE KEY(?: BLOCK)?-----")

# --- key/value pairs -------------------------------------------------------------------------

# Values that Terraform or this redactor print in place of a value; masking them hides nothing.
_PLACEHOLDER_VALUES = ("(sensitive value)", "(sensitive)", "(known after apply)", MASK)
_SCALAR = r"""(?:"(?:[^"\\\n]|\\.)*(?:"|$)|'[^'\n]*(?:'|$)|[^\s,;"'(){}\[\]]+)"""
# A key and its separator. The value is matched separately and only for secret-like keys, so a
# long value under an ordinary key is not scanned twice, and `note: password=x` still finds the
# inner pair.
_KEY = re.compile(
    r"""
    (?:
        "(?P<quoted_key>[^"\n]{1,128})"                             # "DB_PASSWORD" = …, "token": …
      | (?<![\w.\-])(?P<bare_key>-{0,2}[A-Za-z_][\w.\-]{0,127})     # password = …, DB_PASSWORD=…, --token=…
    )
    (?P<separator>[ \t]*(?P<operator>=(?![=>~])|:)[ \t]*)
    """,
    re.VERBOSE,
)
_VALUE = re.compile(
    r"""
        <<-?[A-Za-z_]\w*                                            # heredoc: <<EOT, <<-EOT
      | """ + "|".join(re.escape(value) for value in _PLACEHOLDER_VALUES) + r"""
      | (?:[A-Za-z_][\w.]*)?[({\[]                                  # {, [, jsonencode(
      | """ + _SCALAR + r"""(?:[ \t]*->[ \t]*(?:""" + _SCALAR + r"""|\([^)\n]*\)))?   # "old" -> "new"
    """,
    re.VERBOSE,
)
# The Authorization pattern masks these headers and keeps their scheme visible.
_HEADER_KEYS = frozenset({"authorization", "proxy-authorization"})
_OPENING_BRACKETS = ("(", "[", "{")
# A double-quoted string, skipped whole, or one bracket.
_BRACKET_TOKEN = re.compile(r'"(?:[^"\\\n]|\\.)*"?|[()\[\]{}]')
# A value whose last double-quoted string is still open at the end of the line.
_OPEN_QUOTED_VALUE = re.compile(r'(?:"(?:[^"\\\n]|\\.)*"[ \t]*->[ \t]*)?"(?:[^"\\\n]|\\.)*')
# A heredoc that opens at the end of a line inside a bracketed value: `+ pem = <<-EOT`.
_HEREDOC_AT_END = re.compile(r"<<-?([A-Za-z_]\w*)[ \t]*$")
# The rest of a string continued from an earlier line, up to its closing quote.
_QUOTED_VALUE_END = re.compile(r'(?:[^"\\\n]|\\.)*"')


@dataclass
class _BlockState:
    """Multi-line secret that the current line continues: a private key, a heredoc, a quoted or bracketed value."""

    in_private_key: bool = False
    heredoc_marker: str | None = None
    in_quoted_value: bool = False
    bracket_depth: int = 0


@dataclass(frozen=True)
class _Rules:
    """Compiled matchers for one redaction call, so a concurrent ``add_secret`` cannot change them midway."""

    known_secrets: tuple[re.Pattern, ...]
    patterns: tuple[re.Pattern, ...]


def _replacement(match: re.Match) -> str:
    """Keep the named group ``keep`` (a prefix such as ``Bearer ``) and mask the rest."""
    kept = match.groupdict().get("keep") or ""
    return kept + MASK


def _mask_whole_line(line: str) -> str:
    """Mask a line inside a multi-line secret, keeping its indentation."""
    content = line.lstrip()
    if not content:
        return line
    return line[: len(line) - len(content)] + MASK


def _find_bracket_end(text: str, start: int, depth: int) -> tuple[int, int]:
    """Find where the ``depth`` brackets open at ``start`` close in ``text``.

    Returns the position just after the closing bracket and 0, or ``len(text)`` and the depth
    still open at the end of the line. Brackets inside double-quoted strings do not count.
    """
    for token in _BRACKET_TOKEN.finditer(text, start):
        bracket = token.group()
        if bracket in _OPENING_BRACKETS:
            depth += 1
        elif bracket in (")", "]", "}"):
            depth -= 1
            if depth <= 0:
                return token.end(), 0
    return len(text), depth


# --- known secrets ---------------------------------------------------------------------------


def _secret_forms(value: str) -> set[str]:
    """Return the forms in which ``value`` can appear in output: as is, JSON-escaped, URL-encoded, and per line."""
    forms = {value, json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1], quote(value, safe=""), quote_plus(value, safe="")}
    if "\n" in value:
        # Output is redacted line by line, so each line of a multi-line secret must match on its own.
        forms.update(line.strip() for line in value.splitlines())
    return {form for form in forms if len(form.strip()) >= MIN_SECRET_LENGTH}


_TRIE_END = ""


def _trie_to_pattern(node: dict) -> str:
    """Return the regex for a prefix tree node.

    Where one value ends and longer ones go on, the rest is an optional greedy group, so the
    longest value wins.
    """
    literal = []
    # A chain of single-child nodes becomes a plain literal, so the regex nests only where values branch.
    while len(node) == 1 and _TRIE_END not in node:
        ((character, node),) = node.items()
        literal.append(re.escape(character))

    branches = [re.escape(character) + _trie_to_pattern(child) for character, child in node.items() if character != _TRIE_END]
    if not branches:
        return "".join(literal)
    group = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
    if _TRIE_END in node:
        group = "(?:" + group + ")?"
    return "".join(literal) + group


def _compile_literals(values: Iterable[str]) -> re.Pattern:
    """Compile one regex that matches any of ``values``, the longest where several start at one position.

    The values are merged into a prefix tree, so a search costs about the same for a thousand
    values as for ten. ``values`` must not be empty.
    """
    values = list(values)
    if not values:
        # An empty pattern would match everywhere and mask whole lines.
        raise ValueError("no values to compile")
    trie: dict = {}
    for value in values:
        node = trie
        for character in value:
            node = node.setdefault(character, {})
        node[_TRIE_END] = {}
    try:
        return re.compile(_trie_to_pattern(trie))
    except (RecursionError, re.error, OverflowError):
        # Thousands of values sharing long prefixes nest too deeply for the regex compiler;
        # a flat alternation, longest first, matches the same text more slowly.
        return re.compile("|".join(re.escape(value) for value in sorted(values, key=len, reverse=True)))


def _known_secret_spans(pattern: re.Pattern, text: str) -> list[tuple[int, int]]:
    spans = []
    position = 0
    while (match := pattern.search(text, position)) is not None:
        start, end = match.span()
        # Another secret may start inside this one and run past its end; the span covers both.
        probe = start + 1
        while probe < end:
            overlapping = pattern.match(text, probe)
            if overlapping is not None and overlapping.end() > end:
                end = overlapping.end()
            probe += 1
        spans.append((start, end))
        position = end
    return spans


def _mask_known_secrets(patterns: tuple[re.Pattern, ...], text: str) -> str:
    """Mask every occurrence of a known secret. Overlapping and adjacent secrets become one ``MASK``."""
    spans = sorted(span for pattern in patterns for span in _known_secret_spans(pattern, text))
    if not spans:
        return text

    merged = [list(spans[0])]
    for start, end in spans[1:]:
        if start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])

    pieces = []
    position = 0
    for start, end in merged:
        pieces.append(text[position:start])
        pieces.append(MASK)
        position = end
    pieces.append(text[position:])
    return "".join(pieces)


# --- one line --------------------------------------------------------------------------------


def _redact_line(line: str, state: _BlockState, rules: _Rules) -> str:
    """Redact one line, continuing or opening the multi-line secret recorded in ``state``."""
    if state.in_private_key:
        return _continue_private_key(line, state, rules)
    if state.heredoc_marker is not None:
        return _continue_heredoc(line, state)
    if state.in_quoted_value:
        return _continue_quoted_value(line, state, rules)
    if state.bracket_depth > 0:
        return _continue_bracket_block(line, state, rules)
    return _redact_fresh_line(line, state, rules)


def _redact_rest(rest: str, state: _BlockState, rules: _Rules) -> str:
    """Redact what follows the end of a multi-line secret on the same line."""
    if not rest.strip():
        return rest
    return _redact_line(rest, state, rules)


def _continue_private_key(line: str, state: _BlockState, rules: _Rules) -> str:
    end = _PRIVATE_KEY_END.search(line)
    if end is None:
        return _mask_whole_line(line)

    state.in_private_key = False
    body = line[: end.start()]
    return _mask_whole_line(body) + end.group() + _redact_rest(line[end.end():], state, rules)


def _continue_heredoc(line: str, state: _BlockState) -> str:
    if line.strip() == state.heredoc_marker:
        state.heredoc_marker = None
        return line
    return _mask_whole_line(line)


def _continue_quoted_value(line: str, state: _BlockState, rules: _Rules) -> str:
    end = _QUOTED_VALUE_END.match(line)
    if end is None:
        return _mask_whole_line(line)

    state.in_quoted_value = False
    return _mask_whole_line(line[: end.end() - 1]) + '"' + _redact_rest(line[end.end():], state, rules)


def _continue_bracket_block(line: str, state: _BlockState, rules: _Rules) -> str:
    # A blank line ends the block, so one miscounted bracket cannot hide the rest of a log.
    # Terraform's plan output (checked with 1.11.4) puts blank lines inside a map or list only
    # in heredocs, which are tracked separately.
    if not line.strip():
        state.bracket_depth = 0
        return line

    end, state.bracket_depth = _find_bracket_end(line, 0, state.bracket_depth)
    if state.bracket_depth > 0:
        _open_heredoc_at_end(line, state)
        return _mask_whole_line(line)
    return _mask_whole_line(line[: end - 1]) + line[end - 1] + _redact_rest(line[end:], state, rules)


def _open_heredoc_at_end(line: str, state: _BlockState) -> None:
    heredoc = _HEREDOC_AT_END.search(line)
    if heredoc is not None:
        state.heredoc_marker = heredoc.group(1)


def _redact_fresh_line(line: str, state: _BlockState, rules: _Rules) -> str:
    line = _mask_known_secrets(rules.known_secrets, line)
    line = _mask_private_keys(line, state)
    if _AWS_SECRET_KEY_CONTEXT.search(line):
        line = _AWS_SECRET_KEY.sub(MASK, line)
    for pattern in rules.patterns:
        line = pattern.sub(_replacement, line)
    line = _QUERY_PARAMETER.sub(_mask_query_parameter, line)
    return _mask_key_values(line, state)


def _mask_private_keys(line: str, state: _BlockState) -> str:
    """Mask private key bodies after each BEGIN line. A BEGIN without END on this line opens a block."""
    pieces = []
    position = 0
    while (begin := _PRIVATE_KEY_BEGIN.search(line, position)) is not None:
        pieces.append(line[position:begin.end()])
        end = _PRIVATE_KEY_END.search(line, begin.end())
        if end is None:
            if line[begin.end():].strip():
                pieces.append(MASK)
            state.in_private_key = True
            return "".join(pieces)

        # A whole key on one line, as in JSON with escaped newlines.
        body = line[begin.end():end.start()]
        pieces.append(MASK if body.strip() else body)
        pieces.append(end.group())
        position = end.end()
    pieces.append(line[position:])
    return "".join(pieces)


def _mask_query_parameter(match: re.Match) -> str:
    name = match.group("name")
    if name.lower() in _SECRET_QUERY_NAMES or is_secret_key(name):
        return match.group("keep") + MASK
    return match.group()


def _is_secret_pair_key(match: re.Match) -> bool:
    """Decide whether a ``_KEY`` match is a secret-like key whose value must be masked."""
    bare_key = match.group("bare_key")
    if bare_key is not None and match.group("operator") == ":":
        # `key: value` (YAML, env files, headers) needs a space after the colon, which leaves
        # ARNs and URLs alone. A dotted name before a colon is a Terraform resource address in a
        # status line (`aws_iam_access_key.ci: Creation complete`), not a key.
        if "." in bare_key or match.group("separator")[-1] not in " \t":
            return False

    key = match.group("quoted_key") or bare_key.lstrip("-")
    if key.lower() in _HEADER_KEYS:
        return False
    return is_secret_key(key)


def _mask_key_values(line: str, state: _BlockState) -> str:
    """Mask the values of secret-like keys. A value that continues on the next line opens a block in ``state``."""
    pieces = []
    position = 0
    while (key := _KEY.search(line, position)) is not None:
        pieces.append(line[position:key.end()])
        position = key.end()
        if not _is_secret_pair_key(key):
            continue
        value = _VALUE.match(line, position)
        if value is None or value.group() in _PLACEHOLDER_VALUES:
            continue

        pieces.append(MASK)
        position = value.end()
        if value.group().startswith("<<"):
            state.heredoc_marker = value.group().lstrip("<-")
        elif value.end() == len(line) and _OPEN_QUOTED_VALUE.fullmatch(value.group()):
            state.in_quoted_value = True
        elif value.group().endswith(_OPENING_BRACKETS):
            position, state.bracket_depth = _find_bracket_end(line, value.end(), 1)
            if state.bracket_depth > 0:
                _open_heredoc_at_end(line, state)
    pieces.append(line[position:])
    return "".join(pieces)


# --- plans -----------------------------------------------------------------------------------


def _as_dict(value) -> dict:
    return value if isinstance(value, dict) else {}


def _as_list(value) -> list:
    return value if isinstance(value, list) else []


def _collect_leaves(value, found: set[str]) -> None:
    """Add every string and number inside ``value`` to ``found``."""
    if isinstance(value, dict):
        for item in value.values():
            _collect_leaves(item, found)
    elif isinstance(value, list):
        for item in value:
            _collect_leaves(item, found)
    elif isinstance(value, bool) or value is None:
        return
    elif isinstance(value, (str, int, float)):
        text = value if isinstance(value, str) else str(value)
        if len(text.strip()) >= MIN_SECRET_LENGTH:
            found.add(text)


def _contains_true(marks) -> bool:
    if marks is True:
        return True
    if isinstance(marks, dict):
        return any(_contains_true(item) for item in marks.values())
    if isinstance(marks, list):
        return any(_contains_true(item) for item in marks)
    return False


def _collect_sensitive(value, marks, found: set[str]) -> None:
    """Add the leaves of ``value`` that ``marks`` flags, where ``marks`` has the shape of ``value``.

    ``marks`` is Terraform's ``*_sensitive`` structure: ``true`` flags the whole sub-value, and
    dicts and lists mirror the value's own maps and lists.
    """
    if marks is True:
        _collect_leaves(value, found)
    elif isinstance(marks, dict) and isinstance(value, dict):
        for key, item_marks in marks.items():
            _collect_sensitive(value.get(key), item_marks, found)
    elif isinstance(marks, list) and isinstance(value, list):
        for item, item_marks in zip(value, marks):
            _collect_sensitive(item, item_marks, found)
    elif _contains_true(marks):
        # The shapes differ, so the flagged part cannot be located. Collect all of the value.
        _collect_leaves(value, found)


def _collect_change(change, found: set[str]) -> None:
    change = _as_dict(change)
    _collect_sensitive(change.get("before"), change.get("before_sensitive"), found)
    _collect_sensitive(change.get("after"), change.get("after_sensitive"), found)


def _collect_module(module, found: set[str]) -> None:
    """Add the sensitive attribute values of a ``planned_values`` or ``prior_state`` module and its children."""
    module = _as_dict(module)
    for resource in _as_list(module.get("resources")):
        resource = _as_dict(resource)
        _collect_sensitive(resource.get("values"), resource.get("sensitive_values"), found)
    for child in _as_list(module.get("child_modules")):
        _collect_module(child, found)


def secrets_from_plan(plan: dict) -> list[str]:
    """Collect the values that a ``terraform show -json`` plan marks sensitive, longest first.

    The values come from:

    - the ``before_sensitive`` and ``after_sensitive`` flags of ``resource_changes``,
      ``resource_drift`` and ``output_changes``,
    - the ``sensitive_values`` of resources in ``planned_values`` and ``prior_state``,
    - outputs there with ``"sensitive": true``,
    - root variables declared sensitive in ``configuration``.

    Each string and number (as a string) with at least ``MIN_SECRET_LENGTH`` characters other
    than spaces is returned once. Fields that are missing or of an unexpected type are skipped.
    """
    found: set[str] = set()
    if not isinstance(plan, dict):
        return []

    for change in _as_list(plan.get("resource_changes")) + _as_list(plan.get("resource_drift")):
        _collect_change(_as_dict(change).get("change"), found)
    for change in _as_dict(plan.get("output_changes")).values():
        _collect_change(change, found)

    planned_values = _as_dict(plan.get("planned_values"))
    prior_values = _as_dict(_as_dict(plan.get("prior_state")).get("values"))
    for values in (planned_values, prior_values):
        for output in _as_dict(values.get("outputs")).values():
            output = _as_dict(output)
            if output.get("sensitive") is True:
                _collect_leaves(output.get("value"), found)
        _collect_module(values.get("root_module"), found)

    declarations = _as_dict(_as_dict(_as_dict(plan.get("configuration")).get("root_module")).get("variables"))
    variables = _as_dict(plan.get("variables"))
    for name, declaration in declarations.items():
        if _as_dict(declaration).get("sensitive") is True:
            _collect_leaves(_as_dict(variables.get(name)).get("value"), found)

    return sorted(found, key=lambda value: (-len(value), value))


# --- the redactor ----------------------------------------------------------------------------


class Redactor:
    """Mask secrets in text and JSON-like values.

    ``line`` keeps state across calls for multi-line secrets (private key blocks, and heredocs,
    quoted strings and bracketed values under secret-like keys), so one instance serves one stream of output.
    All methods are thread-safe. ``failures`` counts the calls that returned ``WITHHELD``.
    """

    def __init__(self, extra_patterns: list[str] | None = None, known_secrets: list[str] | None = None):
        self.patterns = list(_PATTERNS) + [re.compile(pattern) for pattern in (extra_patterns or [])]
        self.failures = 0
        self._secrets: set[str] = set()
        self._secret_forms: set[str] = set()
        # Forms added since the last compile, and the compiled tiers of earlier forms.
        self._pending_forms: set[str] = set()
        self._secret_tiers: list[tuple[frozenset[str], re.Pattern]] = []
        self._state = _BlockState()
        self._lock = threading.Lock()
        self._add_secrets(known_secrets or [])

    @property
    def known_secrets(self) -> list[str]:
        """The values added with ``add_secret`` or ``add_plan``, longest first."""
        with self._lock:
            return sorted(self._secrets, key=len, reverse=True)

    def add_secret(self, value: str) -> None:
        """Mask this exact value from now on, wherever it appears (a sensitive variable's value, for example).

        Values with fewer than ``MIN_SECRET_LENGTH`` characters other than spaces are ignored.
        """
        self._add_secrets([value])

    def add_plan(self, plan: dict) -> None:
        """Mask from now on every value that the ``terraform show -json`` document ``plan`` marks sensitive."""
        self._add_secrets(secrets_from_plan(plan))

    def line(self, text: str) -> str:
        """Redact one line of streamed output, or return ``WITHHELD`` if redaction fails.

        Text with newlines is redacted as several lines of the same stream.
        """
        with self._lock:
            try:
                rules = self._rules()
                if "\n" in text:
                    return _redact_lines(text, self._state, rules)
                return _redact_line(text, self._state, rules)
            except Exception as error:  # noqa: BLE001 - any failure must withhold the line, not show it
                return self._withhold(error)

    def text(self, text: str) -> str:
        """Redact a whole block of text, or return ``WITHHELD`` if redaction fails."""
        try:
            with self._lock:
                rules = self._rules()
            return _redact_block(text, rules)
        except Exception as error:  # noqa: BLE001 - any failure must withhold the text, not show it
            with self._lock:
                return self._withhold(error)

    def structure(self, value):
        """Return a redacted deep copy of a JSON-like value, or ``WITHHELD`` if redaction fails.

        Strings are redacted like ``text``, dict keys are kept, and the whole value under a
        secret-like key (see ``is_secret_key``) becomes ``MASK``. A number equal to a known secret
        becomes ``MASK``. Tuples become lists, and other objects their redacted ``str()``.
        """
        try:
            with self._lock:
                rules = self._rules()
            return _redact_structure(value, rules)
        except Exception as error:  # noqa: BLE001 - includes RecursionError on cyclic values
            with self._lock:
                return self._withhold(error)

    def _add_secrets(self, values: Iterable[str]) -> None:
        with self._lock:
            for value in values:
                if isinstance(value, bool) or value is None:
                    continue
                text = value if isinstance(value, str) else str(value)
                if len(text.strip()) < MIN_SECRET_LENGTH or text in self._secrets:
                    continue
                self._secrets.add(text)
                new_forms = _secret_forms(text) - self._secret_forms
                self._secret_forms.update(new_forms)
                self._pending_forms.update(new_forms)

    def _rules(self) -> _Rules:
        """Return the current matchers and compile the known secrets added since the last call.

        The caller holds the lock.
        """
        if self._pending_forms:
            self._compile_pending_forms()
        # ``patterns`` is a public list that callers may change, so it is copied on every call.
        return _Rules(tuple(pattern for _, pattern in self._secret_tiers), tuple(self.patterns))

    def _compile_pending_forms(self) -> None:
        """Compile the new secret forms into a tier, merged with the earlier tiers that are not larger.

        Tier sizes grow like the digits of a binary counter, so a caller who alternates
        ``add_secret`` and ``line`` pays about n log n in compiling instead of n squared, and a
        line is searched by at most about log2(n) regexes.
        """
        forms = set(self._pending_forms)
        self._pending_forms.clear()
        while self._secret_tiers and len(self._secret_tiers[-1][0]) <= len(forms):
            forms |= self._secret_tiers.pop()[0]
        self._secret_tiers.append((frozenset(forms), _compile_literals(forms)))

    def _withhold(self, error: Exception) -> str:
        """Count a redaction failure and return the placeholder. The caller holds the lock."""
        self.failures += 1
        # Only the exception type is logged, because its message may quote the text being redacted.
        if self.failures == 1:
            logger.error(
                "Redaction failed with %s, so the output was withheld. Later failures of this redactor are logged at debug level.",
                type(error).__name__,
            )
        else:
            logger.debug("Redaction failed again with %s (%d failures)", type(error).__name__, self.failures)
        return WITHHELD


def _redact_lines(text: str, state: _BlockState, rules: _Rules) -> str:
    """Redact text of several lines, continuing the multi-line secret recorded in ``state``."""
    # Known secrets go first over the whole text, because one may span several lines.
    text = _mask_known_secrets(rules.known_secrets, text)
    return "\n".join(_redact_line(line, state, rules) for line in text.split("\n"))


def _redact_block(text: str, rules: _Rules) -> str:
    """Redact text of several lines, with its own multi-line state."""
    return _redact_lines(text, _BlockState(), rules)


def _redact_structure(value, rules: _Rules):
    if isinstance(value, dict):
        return {
            key: MASK if isinstance(key, str) and is_secret_key(key) else _redact_structure(item, rules)
            for key, item in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [_redact_structure(item, rules) for item in value]
    if isinstance(value, str):
        return _redact_block(value, rules)
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        text = str(value)
        return MASK if any(pattern.fullmatch(text) for pattern in rules.known_secrets) else value
    return _redact_block(str(value), rules)
