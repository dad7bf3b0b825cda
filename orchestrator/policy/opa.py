"""Evaluate conftest-style Rego policies against the plan of a shard.

A policy folder contains ``.rego`` files in any package. In every package, the rules named
``deny``, ``violation`` and ``warn`` (and conftest's prefixed forms such as
``deny_public_bucket``) are evaluated against one input document: the plan JSON of
``terraform show -json`` with the shard's metadata under the top-level key ``orchestrator``.
``deny`` and ``violation`` findings fail the shard, and ``warn`` findings do not.

A rule yields messages as strings or as objects with a string ``msg`` field (conftest's
structured form). An object may name the resource address in a ``resource`` field.

Two engines evaluate the same policies:

- ``regopy`` (the Python package of rego-cpp) runs in-process and needs no network.
  Each interpreter compiles the policies into a bundle once and reuses it, so an
  evaluation costs only the conversion of the input and the rules themselves.
- ``opa`` runs ``opa eval`` in a subprocess for every evaluation, when an ``opa`` binary
  is on PATH.

Nothing here passes a shard that was not checked: a Rego syntax error, an engine error
and a policy folder without a single deny, violation or warn rule all raise
``PolicyEngineError``.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from orchestrator.errors import OrchestratorError

logger = logging.getLogger(__name__)

EngineChoice = Literal["auto", "regopy", "opa"]

FAILURE_RULE_KINDS = ("deny", "violation")

# conftest's rule names: the kind alone or followed by an underscore and a suffix.
RULE_NAME_PATTERN = r"(?P<name>(?P<kind>deny|violation|warn)(?:_[A-Za-z0-9_]+)?)"

# Rule heads are found in the source text, since neither engine lists the rules of a package.
# A head at the start of a line (as `opa fmt` writes it) continues with a keyword, a key in
# brackets, a body or a value. An indented head counts only with `contains` or `if`, because
# an indented `deny[x]` or `deny := x` may be an expression in a rule body. A function such
# as `deny_reason(x)` is no rule.
RULE_HEADS = (
    re.compile(r"^(?:default[ \t]+)?" + RULE_NAME_PATTERN + r"(?=[ \t]*(?:contains\b|if\b|\[|\{|:=|=(?!=)))", re.MULTILINE),
    re.compile(r"^[ \t]+" + RULE_NAME_PATTERN + r"(?=[ \t]+(?:contains|if)\b)", re.MULTILINE),
)

PACKAGE_DECLARATION = re.compile(r"^package[ \t]+(?P<path>[^\s#]+)", re.MULTILINE)
PACKAGE_PATH_SEGMENT = re.compile(r'\.?(?:(?P<name>[A-Za-z_][A-Za-z0-9_]*)|\["(?P<quoted>[^"]*)"\])')

# The key that build_policy_input adds to the plan JSON.
METADATA_KEY = "orchestrator"

# A limit for one `opa` call. It is an estimate, not a measurement: starting opa and evaluating
# one shard's plan should take seconds at most, so a call that runs for a minute hangs.
OPA_TIMEOUT_SECONDS = 60

# OPA unit tests (run by `opa test`) are not policies of the shard.
TEST_FILE_SUFFIX = "_test.rego"


class PolicyEngineError(OrchestratorError):
    """The policies could not be loaded or evaluated, so the plan was not checked."""


@dataclass(frozen=True)
class PolicyFinding:
    package: str  # e.g. "main" or "aws.s3"
    rule: str  # the rule's name: "deny", "violation", "warn", or a prefixed name such as "deny_public_bucket"
    message: str
    resource: str | None  # the resource address when the policy names one (object form field "resource"), else None


@dataclass
class PolicyResult:
    failures: list[PolicyFinding]
    warnings: list[PolicyFinding]
    rules_evaluated: int  # number of deny/violation/warn rules found and evaluated
    engine: str  # "regopy x.y.z" or "opa x.y.z"
    duration_seconds: float = 0.0  # wall-clock time of the evaluation

    @property
    def passed(self) -> bool:
        return not self.failures


@dataclass(frozen=True)
class PolicyRule:
    """A deny, violation or warn rule: every definition of one name in one package."""

    package: str  # as the package declaration writes it, e.g. "aws.s3"
    package_path: tuple[str, ...]  # e.g. ("aws", "s3")
    name: str  # e.g. "deny" or "deny_public_bucket"
    kind: str  # "deny", "violation" or "warn"

    @property
    def reference(self) -> str:
        """The rule's reference in Rego, in bracket form so that any package segment fits."""
        segments = (*self.package_path, self.name)
        return "data" + "".join(f"[{json.dumps(segment)}]" for segment in segments)


@dataclass(frozen=True)
class PolicyModule:
    path: Path
    source: str


def build_policy_input(plan: dict, metadata: dict) -> dict:
    """Return the policy input of a shard: the plan JSON plus ``metadata`` under ``orchestrator``.

    ``metadata`` describes the shard, with keys such as ``account``, ``account_id``,
    ``environment``, ``region``, ``service``, ``project`` and ``shard``. Policies read them
    as ``input.orchestrator.environment`` and so on. The plan itself is not copied deeply
    and not changed.
    """
    if not isinstance(plan, dict):
        raise TypeError(f"plan must be the JSON object of `terraform show -json`, not {type(plan).__name__}")
    if not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict, not {type(metadata).__name__}")
    if METADATA_KEY in plan:
        raise ValueError(f"the plan already has a top-level key {METADATA_KEY!r}: pass the plan JSON, not a policy input")

    return {**plan, METADATA_KEY: dict(metadata)}


def load_policies(policy_dir: Path, engine: EngineChoice = "auto") -> PolicySet:
    """Parse the ``.rego`` files under ``policy_dir`` and prepare an engine to evaluate them.

    ``engine="auto"`` uses ``opa eval`` when an ``opa`` binary is on PATH and regopy otherwise.
    Raises PolicyEngineError when a file does not parse (naming the file and line), when the
    engine is missing, or when no file defines a deny, violation or warn rule.
    """
    policy_dir = Path(policy_dir)
    if not policy_dir.is_dir():
        raise PolicyEngineError(f"policy folder {policy_dir} not found")

    modules = read_modules(policy_dir)
    if not modules:
        raise PolicyEngineError(f"no .rego file found under {policy_dir}: the plan cannot be checked without policies")

    engine_backend = create_engine(engine, modules)

    # Rules are read from the source only after the engine accepted it, so that a file
    # with a syntax error is reported by the engine, with its own message and position.
    rules = find_rules(modules)
    if not rules:
        raise PolicyEngineError(
            f"no deny, violation or warn rule found in the {len(modules)} .rego file(s) under {policy_dir}: "
            "name rules deny, violation or warn (optionally with a suffix such as deny_unencrypted)"
        )

    engine_backend.prepare(rules)
    logger.debug("loaded %d policy rule(s) from %d file(s) under %s with %s", len(rules), len(modules), policy_dir, engine_backend.description)
    return PolicySet(policy_dir=policy_dir, modules=modules, rules=rules, engine_backend=engine_backend)


class PolicySet:
    """The parsed policies of a folder with a ready engine; ``evaluate`` may run in many threads at once."""

    def __init__(self, policy_dir: Path, modules: list[PolicyModule], rules: list[PolicyRule], engine_backend: RegopyEngine | OpaEngine):
        self.policy_dir = policy_dir
        self.modules = modules
        self.rules = rules
        self._engine_backend = engine_backend

    @property
    def engine(self) -> str:
        return self._engine_backend.description

    def evaluate(self, input_document: dict) -> PolicyResult:
        """Evaluate every deny, violation and warn rule against ``input_document``.

        Build the input with ``build_policy_input``. Raises PolicyEngineError when the engine
        fails or a rule yields a value that is neither a message nor a set of messages.
        """
        started = time.perf_counter()
        rule_values = self._engine_backend.evaluate(input_document)
        if not is_one_list_per_rule(rule_values, len(self.rules)):
            raise PolicyEngineError(f"{self.engine} returned {json.dumps(rule_values)[:300]} for {len(self.rules)} rules: expected one array of values per rule")

        failures: list[PolicyFinding] = []
        warnings: list[PolicyFinding] = []
        for rule, values in zip(self.rules, rule_values):
            # An undefined rule (for example a boolean rule whose body failed) yields no value.
            for value in values:
                findings = findings_from_value(rule, value)
                if rule.kind in FAILURE_RULE_KINDS:
                    failures.extend(findings)
                else:
                    warnings.extend(findings)

        return PolicyResult(
            failures=sorted(failures, key=finding_sort_key),
            warnings=sorted(warnings, key=finding_sort_key),
            rules_evaluated=len(self.rules),
            engine=self.engine,
            duration_seconds=time.perf_counter() - started,
        )


def is_one_list_per_rule(rule_values: Any, rule_count: int) -> bool:
    return isinstance(rule_values, list) and len(rule_values) == rule_count and all(isinstance(values, list) for values in rule_values)


def read_modules(policy_dir: Path) -> list[PolicyModule]:
    """Read every ``.rego`` file under ``policy_dir`` and its subfolders, except OPA unit tests."""
    modules = []
    for path in sorted(policy_dir.rglob("*.rego")):
        if path.name.endswith(TEST_FILE_SUFFIX) or not path.is_file():
            continue
        try:
            source = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise PolicyEngineError(f"cannot read policy file {path}: {error}") from error
        modules.append(PolicyModule(path=path, source=source))
    return modules


def find_rules(modules: list[PolicyModule]) -> list[PolicyRule]:
    """List the deny, violation and warn rules that the modules define, once per package and name."""
    rules: dict[tuple[tuple[str, ...], str], PolicyRule] = {}
    for module in modules:
        package, package_path = parse_package(module)
        for rule_head in RULE_HEADS:
            for match in rule_head.finditer(module.source):
                rule = PolicyRule(package=package, package_path=package_path, name=match["name"], kind=match["kind"])
                rules.setdefault((package_path, rule.name), rule)
    return sorted(rules.values(), key=lambda rule: (rule.package_path, rule.name))


def parse_package(module: PolicyModule) -> tuple[str, tuple[str, ...]]:
    """Return the package of a module as written (``aws.s3``) and as path segments (``("aws", "s3")``)."""
    declaration = PACKAGE_DECLARATION.search(module.source)
    if declaration is None:
        raise PolicyEngineError(f"{module.path}: no package declaration found")

    written = declaration["path"]
    segments = []
    position = 0
    while position < len(written):
        segment = PACKAGE_PATH_SEGMENT.match(written, position)
        if segment is None or segment.end() == position:
            raise PolicyEngineError(f"{module.path}: cannot read the package path {written!r}")
        segments.append(segment["name"] if segment["name"] is not None else segment["quoted"])
        position = segment.end()
    return written, tuple(segments)


def findings_from_value(rule: PolicyRule, value: Any) -> list[PolicyFinding]:
    """Turn the value of one rule into findings.

    Accepted values: a set of messages (the usual ``deny contains msg if``), a single message,
    a boolean (``deny if ...``), and an object whose values are all true. The last one is how
    regopy reads the Rego v0 form ``deny[msg] { ... }``: as an object rule with ``msg`` as key.
    A message is a string or an object with a string ``msg`` field.
    """
    if value is True:
        return [PolicyFinding(rule.package, rule.name, f"rule {rule.name} in package {rule.package} is true", None)]
    if value is False or value is None or value == {}:
        return []
    if isinstance(value, (str, dict)) and not is_message_object_map(value):
        return [finding_from_message(rule, value)]
    if isinstance(value, dict):
        return [finding_from_message(rule, decode_object_key(key)) for key in value]
    if isinstance(value, list):
        return [finding_from_message(rule, message) for message in value]

    raise PolicyEngineError(f"rule {rule.reference} returned {json.dumps(value)}: expected messages (strings or objects with a msg field)")


def is_message_object_map(value: Any) -> bool:
    """Tell whether ``value`` is regopy's object reading of a v0 partial set: every value is true and no msg field."""
    return isinstance(value, dict) and "msg" not in value and bool(value) and all(item is True for item in value.values())


def decode_object_key(key: str) -> Any:
    """Return an object key of a regopy result as a value: regopy writes a non-string key as its JSON text."""
    if key.startswith("{"):
        try:
            return json.loads(key)
        except json.JSONDecodeError:
            return key
    return key


def finding_from_message(rule: PolicyRule, message: Any) -> PolicyFinding:
    """Build a finding from a string message or from conftest's structured form ``{"msg": ..., "resource": ...}``."""
    if isinstance(message, str):
        return PolicyFinding(rule.package, rule.name, message, None)

    if isinstance(message, dict) and isinstance(message.get("msg"), str):
        resource = message.get("resource")
        return PolicyFinding(rule.package, rule.name, message["msg"], resource if isinstance(resource, str) else None)

    raise PolicyEngineError(
        f"rule {rule.reference} returned the message {json.dumps(message)}: a message must be a string or an object with a string msg field"
    )


def finding_sort_key(finding: PolicyFinding) -> tuple[str, str, str, str]:
    return (finding.package, finding.rule, finding.resource or "", finding.message)


def build_query(rules: list[PolicyRule]) -> str:
    """Return one Rego query that evaluates every rule.

    Each rule becomes ``[value | value := data.pkg.rule]``: an empty array when the rule is
    undefined and a one-element array otherwise, so that one undefined rule does not make the
    whole query undefined.
    """
    collections = ", ".join(f"[value | value := {rule.reference}]" for rule in rules)
    return f"result := [{collections}]"


def create_engine(engine: EngineChoice, modules: list[PolicyModule]) -> RegopyEngine | OpaEngine:
    """Create the engine that ``engine`` names, parsing ``modules`` with it."""
    if engine not in ("auto", "regopy", "opa"):
        raise ValueError(f"unknown policy engine {engine!r}: expected 'auto', 'regopy' or 'opa'")

    opa_binary = shutil.which("opa")
    if engine == "opa" and opa_binary is None:
        raise PolicyEngineError("policy engine 'opa' requested, but no opa binary is on PATH")
    if engine == "opa" or (engine == "auto" and opa_binary is not None):
        return OpaEngine(opa_binary, modules)
    return RegopyEngine(modules)


# --- regopy ---------------------------------------------------------------------------
#
# The code below works around these quirks of regopy 1.5.2:
#
# - An input string passed as a Python value is stored raw, so a string that contains a
#   double quote (every for_each address such as aws_s3_bucket.this["logs"]) comes back in
#   invalid JSON, and json.unmarshal of such a string is undefined. Strings passed in their
#   JSON-escaped form, as the interpreter stores string literals, behave correctly. A probe
#   at start-up checks which form this regopy version needs.
# - A query re-compiles all modules (measured at about 10 ms for the shipped policies on a
#   2-core x86_64 machine), while a compiled bundle does not. Each interpreter therefore
#   builds the query into a bundle once.
# - Builtin errors are printed to stdout unless the interpreter's log level is NONE.
# - json.unmarshal rejects \uXXXX escapes ("Invalid escape sequence"), which Terraform's
#   jsonencode writes for <, > and &. Input strings that are JSON documents therefore reach
#   regopy with such escapes replaced by the characters they stand for (same JSON value).
#
# The workarounds call regopy.rego_shared and the `_impl` handles of Interpreter and Bundle,
# which are internals of regopy 1.5, so a later regopy may need changes here.

# The probe string contains a double quote, a backslash and a newline: the characters that
# a Terraform plan escapes and that regopy 1.5.2 mishandles when they arrive raw.
ENCODING_PROBE_VALUE = 'aws_s3_bucket.this["a\\b"]\n'
ENCODING_PROBE_QUERY = r'result := [input.probe, input.probe == "aws_s3_bucket.this[\"a\\b\"]\n", json.unmarshal(input.document).probe]'


class RegopyEngine:
    """Evaluate policies in-process with regopy, one interpreter per concurrent evaluation."""

    def __init__(self, modules: list[PolicyModule]):
        try:
            import regopy
        except ImportError as error:
            raise PolicyEngineError("policy engine 'regopy' is not installed: pip install regopy") from error

        self._regopy = regopy
        self.description = f"regopy {regopy.__version__}"
        self._modules = modules
        self._rules: list[PolicyRule] = []
        self._idle_evaluators: queue.SimpleQueue[RegopyEvaluator] = queue.SimpleQueue()
        self._encode_strings = self._detect_string_encoding()

        # Parsing now reports syntax errors when the policies are loaded, not at the first shard.
        self._first_interpreter = self._new_interpreter()

    def prepare(self, rules: list[PolicyRule]) -> None:
        """Compile the query of ``rules`` into the first interpreter, which later evaluations reuse."""
        self._rules = rules
        self._idle_evaluators.put(RegopyEvaluator(self._first_interpreter, rules, self._modules))

    def evaluate(self, input_document: dict) -> list[list[Any]]:
        """Return the values of the rules for ``input_document``, in the order of ``prepare``."""
        # An interpreter has one input at a time, so each thread takes its own from the pool.
        try:
            evaluator = self._idle_evaluators.get_nowait()
        except queue.Empty:
            evaluator = self._new_evaluator()

        try:
            return evaluator.evaluate(encode_input(input_document, self._encode_strings))
        finally:
            self._idle_evaluators.put(evaluator)

    def _new_interpreter(self) -> Any:
        interpreter = self._regopy.Interpreter()
        interpreter.log_level = self._regopy.LogLevel.NONE

        for module in self._modules:
            try:
                interpreter.add_module(str(module.path), module.source)
            except self._regopy.RegoError as error:
                raise PolicyEngineError(f"invalid Rego: {describe_regopy_errors(str(error), self._modules)}") from error

        return interpreter

    def _new_evaluator(self) -> RegopyEvaluator:
        assert self._rules, "prepare() must run before evaluate()"
        return RegopyEvaluator(self._new_interpreter(), self._rules, self._modules)

    def _detect_string_encoding(self) -> bool:
        """Return True when input strings must be passed JSON-escaped, False when raw strings work.

        Raises PolicyEngineError when neither form gives back the probe string intact.
        """
        from regopy.rego_shared import rego_query

        for escaped in (True, False):
            probe_input = {"probe": ENCODING_PROBE_VALUE, "document": json.dumps({"probe": ENCODING_PROBE_VALUE})}
            interpreter = self._regopy.Interpreter()
            interpreter.log_level = self._regopy.LogLevel.NONE
            interpreter.set_input(self._regopy.Input(encode_strings(probe_input) if escaped else probe_input))
            _, text = read_output(rego_query(interpreter._impl, ENCODING_PROBE_QUERY))

            try:
                result = json.loads(text)["bindings"]["result"]
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
            if result == [ENCODING_PROBE_VALUE, True, ENCODING_PROBE_VALUE]:
                return escaped

        raise PolicyEngineError(f"{self.description} does not pass strings with quotes or backslashes through intact; use another regopy version or the opa engine")


class RegopyEvaluator:
    """One regopy interpreter with the policies and the query compiled into a bundle."""

    def __init__(self, interpreter: Any, rules: list[PolicyRule], modules: list[PolicyModule]):
        self._interpreter = interpreter
        self._rules = rules
        self._modules = modules
        self._bundle = interpreter.build(build_query(rules))
        if not self._bundle.ok():
            raise PolicyEngineError(f"regopy failed to compile the policies: {describe_regopy_errors(self._last_error(), modules)}")

    def evaluate(self, encoded_input: Any) -> list[list[Any]]:
        # The low-level functions are used because regopy's Output class parses the output
        # as JSON at once, and an error output is not JSON.
        from regopy.rego_shared import rego_bundle_query

        self._interpreter.set_input(encoded_input)
        succeeded, text = read_output(rego_bundle_query(self._interpreter._impl, self._bundle._impl))

        if succeeded and text.startswith("{"):
            try:
                return json.loads(text)["bindings"]["result"]
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise PolicyEngineError(
                    "regopy returned output that is not valid JSON; a policy that changes the case of strings "
                    f"with escaped characters (upper, lower) is one known cause: {error}"
                ) from error

        if succeeded:
            detail = describe_regopy_errors(text, self._modules)
        else:
            # regopy reports some evaluation errors, such as conflicting values of a complete rule, with no text.
            detail = "regopy reported an error without details (conflicting values of a complete rule are one cause)"
        failing_rules = ", ".join(self._find_failing_rules()) or "an unknown rule"
        raise PolicyEngineError(f"policy evaluation failed in {failing_rules}: {detail}")

    def _find_failing_rules(self) -> list[str]:
        """Evaluate each rule alone against the current input and return the references of those that fail."""
        from regopy.rego_shared import rego_query

        failing = []
        for rule in self._rules:
            succeeded, text = read_output(rego_query(self._interpreter._impl, build_query([rule])))
            if not (succeeded and text.startswith("{")):
                failing.append(rule.reference)
        return failing

    def _last_error(self) -> str:
        from regopy.rego_shared import rego_get_error

        return rego_get_error(self._interpreter._impl)


def read_output(output: Any) -> tuple[bool, str]:
    """Return whether a regopy output is ok and its text, and free the output."""
    from regopy.rego_shared import rego_free_output, rego_output_ok, rego_output_string

    try:
        return rego_output_ok(output), rego_output_string(output)
    finally:
        rego_free_output(output)


def encode_input(input_document: Any, escape_strings: bool) -> Any:
    """Convert ``input_document`` into a regopy Input, escaping strings when this regopy needs it."""
    import regopy

    try:
        return regopy.Input(encode_strings(input_document, escape_strings))
    except (TypeError, ValueError) as error:
        raise PolicyEngineError(f"the policy input is not a JSON document: {error}") from error


def encode_strings(value: Any, escape: bool = True) -> Any:
    """Return a copy of ``value`` with every string, keys included, prepared for regopy.

    A string that is a JSON document loses its \\uXXXX escapes, and with ``escape`` every
    string is in JSON-escaped form without the quotes.
    """
    if isinstance(value, str):
        text = decode_unicode_escapes(value)
        return json.dumps(text, ensure_ascii=False)[1:-1] if escape else text
    if isinstance(value, dict):
        return {encode_strings(key, escape): encode_strings(item, escape) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode_strings(item, escape) for item in value]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    raise TypeError(f"a value of type {type(value).__name__} has no JSON form")


# A \uXXXX escape that follows an even number of backslashes, so it is not itself escaped.
UNICODE_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\u([0-9a-fA-F]{4})")


def decode_unicode_escapes(text: str) -> str:
    """Replace the \\uXXXX escapes of a JSON document in ``text`` by their characters.

    Escapes of control characters, quotes, backslashes and surrogates stay. ``text`` comes
    back unchanged unless it is a JSON object or array that keeps its value.
    """
    if "\\u" not in text or not text.lstrip().startswith(("{", "[")):
        return text
    try:
        document = json.loads(text)
    except ValueError:
        return text

    def replace(escape: re.Match[str]) -> str:
        character = chr(int(escape[2], 16))
        if character < " " or character in '"\\' or "\ud800" <= character <= "\udfff":
            return escape[0]
        return escape[1] + character

    decoded = UNICODE_ESCAPE.sub(replace, text)
    return decoded if json.loads(decoded) == document else text


# regopy writes errors as S-expressions such as
#   (error 8:bad.rego|41|2 (errormsg 27:Invalid assignment operator) ...)
# where "8:" is the byte length of the file name and 41|2 are the byte offset and length
# of the code in that file. Errors without a position (a missing function) have no name.
REGOPY_ERROR_START = re.compile(rb"\(error(?: (\d+):)?")
REGOPY_ERROR_POSITION = re.compile(rb"\|(\d+)\|(\d+)")
REGOPY_ERROR_MESSAGE = re.compile(rb"\(errormsg (\d+):")


def describe_regopy_errors(text: str, modules: list[PolicyModule]) -> str:
    """Turn regopy's error text into ``file:line:column: message`` entries, joined by "; "."""
    sources = {str(module.path): module.source.encode("utf-8") for module in modules}
    data = text.encode("utf-8")

    descriptions = []
    for start in REGOPY_ERROR_START.finditer(data):
        position_text = ""
        cursor = start.end()
        if start[1] is not None:
            name_end = cursor + int(start[1])
            file_name = data[cursor:name_end].decode("utf-8", "replace")
            position = REGOPY_ERROR_POSITION.match(data, name_end)
            position_text = f"{file_name}: "
            if position is not None and file_name in sources:
                line, column = line_and_column(sources[file_name], int(position[1]))
                position_text = f"{file_name}:{line}:{column}: "
            cursor = name_end

        message = REGOPY_ERROR_MESSAGE.search(data, cursor)
        if message is None:
            continue
        message_text = data[message.end() : message.end() + int(message[1])].decode("utf-8", "replace")
        descriptions.append(position_text + message_text)

    if not descriptions:
        return text.strip()[:500]
    return "; ".join(dict.fromkeys(descriptions))


def line_and_column(source: bytes, offset: int) -> tuple[int, int]:
    """Return the 1-based line and column of a byte offset in ``source``."""
    line_start = source.rfind(b"\n", 0, offset) + 1
    line = source.count(b"\n", 0, offset) + 1
    column = len(source[line_start:offset].decode("utf-8", "replace")) + 1
    return line, column


# --- opa ------------------------------------------------------------------------------


class OpaEngine:
    """Evaluate policies with the ``opa`` binary: ``opa check`` once, then one ``opa eval`` per input."""

    # NOTE: no opa binary could be installed where this was written, so this class was run only
    # against a stand-in that replies in OPA's documented JSON format (see the tests).

    def __init__(self, binary: str, modules: list[PolicyModule]):
        self._binary = binary
        self._modules = modules
        self._query: str | None = None
        self.description = f"opa {self._read_version()}"
        self._check_modules()

    def prepare(self, rules: list[PolicyRule]) -> None:
        self._query = build_query(rules)

    def evaluate(self, input_document: dict) -> list[list[Any]]:
        """Return the values of the rules for ``input_document``, in the order of ``prepare``."""
        assert self._query is not None, "prepare() must run before evaluate()"
        try:
            input_text = json.dumps(input_document)
        except (TypeError, ValueError) as error:
            raise PolicyEngineError(f"the policy input is not a JSON document: {error}") from error

        command = [self._binary, "eval", "--format", "json", "--stdin-input", *self._data_arguments(), self._query]
        completed = self._run(command, input_text)
        output = parse_opa_output(completed, "opa eval")
        if "errors" in output:
            raise PolicyEngineError(f"policy evaluation failed: {describe_opa_errors(output['errors'])}")

        try:
            return output["result"][0]["bindings"]["result"]
        except (KeyError, IndexError, TypeError) as error:
            raise PolicyEngineError(f"opa eval returned no result for the policy query: {completed.stdout[:500]}") from error

    def _read_version(self) -> str:
        completed = self._run([self._binary, "version"], None)
        version = re.search(r"^Version:\s*(\S+)", completed.stdout, re.MULTILINE)
        if completed.returncode != 0 or version is None:
            raise PolicyEngineError(f"`{self._binary} version` failed: {(completed.stderr or completed.stdout).strip()[:500]}")
        return version[1]

    def _check_modules(self) -> None:
        """Parse and compile the modules with ``opa check``, which reports errors with file and line."""
        completed = self._run([self._binary, "check", "--format", "json", *(str(module.path) for module in self._modules)], None)
        if completed.returncode == 0:
            return

        output = parse_opa_output(completed, "opa check")
        raise PolicyEngineError(f"invalid Rego: {describe_opa_errors(output.get('errors', []))}")

    def _data_arguments(self) -> list[str]:
        return [argument for module in self._modules for argument in ("--data", str(module.path))]

    def _run(self, command: list[str], input_text: str | None) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(command, input=input_text, capture_output=True, text=True, timeout=OPA_TIMEOUT_SECONDS, check=False)
        except subprocess.TimeoutExpired as error:
            raise PolicyEngineError(f"`{' '.join(command[:2])}` timed out after {OPA_TIMEOUT_SECONDS} s") from error
        except OSError as error:
            raise PolicyEngineError(f"cannot run {command[0]}: {error}") from error


def parse_opa_output(completed: subprocess.CompletedProcess[str], command_name: str) -> dict:
    """Parse the JSON that ``opa ... --format json`` writes to stdout, errors included."""
    try:
        output = json.loads(completed.stdout)
    except json.JSONDecodeError:
        output = None

    if isinstance(output, dict):
        return output
    detail = (completed.stderr or completed.stdout).strip()[:500]
    raise PolicyEngineError(f"{command_name} failed with exit status {completed.returncode}: {detail}")


def describe_opa_errors(errors: list[dict]) -> str:
    """Turn OPA's JSON errors into ``file:row:col: message (code)`` entries, joined by "; "."""
    descriptions = []
    for error in errors:
        location = error.get("location") or {}
        position = ":".join(str(location[key]) for key in ("file", "row", "col") if location.get(key))
        text = f"{error.get('message', 'unknown error')} ({error.get('code', 'no code')})"
        descriptions.append(f"{position}: {text}" if position else text)
    return "; ".join(descriptions) or "no error details"
