"""Read Terraform variable-definition files (``*.tfvars``) and keep the position of every value.

A tfvars file is a list of ``name = <constant>`` assignments in HCL native syntax. For every
file it accepts, this reader returns the values that Terraform 1.11 reads from it, and records
where each key and list item is written, so later checks can point at the right line and
column.

Terraform also evaluates operators, conditionals and template interpolation in tfvars files
(``1 + 2``, ``"${"a"}"``). This reader rejects them with a clear message, because deployment
files should hold plain values. Variable references and function calls are rejected by both.
"""

from __future__ import annotations

import bisect
import codecs
import re
import unicodedata
from dataclasses import dataclass, field
from decimal import Decimal
from os import PathLike, fspath
from typing import NoReturn

from orchestrator.errors import OrchestratorError

MAX_NESTING_DEPTH = 200
"""Maximum depth of nested lists and objects, which keeps the recursive parser off Python's
recursion limit."""

_MAX_INTEGER_DIGITS = 4000
"""Maximum number of digits of an integral number, which stops ``1e999999999`` from
exhausting memory."""


@dataclass(frozen=True)
class Position:
    """1-based line and column in a file. Columns count characters, not bytes."""

    line: int
    column: int


@dataclass(frozen=True)
class Diagnostic:
    """One problem in a file: where it is and what to do about it."""

    path: str
    line: int
    column: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}: {self.message}"


class TfvarsSyntaxError(OrchestratorError):
    """A tfvars file is unreadable or not valid. ``diagnostics`` lists at least one problem."""

    def __init__(self, diagnostics):
        self.diagnostics = list(diagnostics)
        super().__init__("\n".join(str(diagnostic) for diagnostic in self.diagnostics))


class _LineIndex:
    """Start offsets of the lines of a text, computed on first use."""

    def __init__(self, text: str):
        self.text = text
        self._starts: list[int] | None = None

    def line_start(self, offset: int) -> int:
        """Return the offset of the first character of the line that contains ``offset``."""
        if self._starts is None:
            self._starts = [0] + [match.end() for match in re.finditer("\n", self.text)]
        return self._starts[bisect.bisect_right(self._starts, offset) - 1]

    def position(self, offset: int) -> Position:
        """Convert a character offset in the text to a 1-based line and column."""
        line_start = self.line_start(offset)
        line_index = bisect.bisect_left(self._starts, line_start)
        return Position(line_index + 1, offset - line_start + 1)


@dataclass(frozen=True)
class _SourceMap:
    """The offsets of the keys and list items of one parsed file, and its line index."""

    lines: _LineIndex
    offsets: dict[tuple, int]


@dataclass
class TfvarsDocument:
    """The values of one tfvars file, with the source position of each key and list item."""

    path: str
    values: dict[str, object]
    warnings: list[Diagnostic] = field(default_factory=list)
    """Problems that Terraform accepts silently, such as a key set twice in one object."""
    _source: _SourceMap | None = field(default=None, repr=False, compare=False)

    def position_of(self, key_path: tuple) -> Position:
        """Return where the value at ``key_path`` is written.

        Object keys (top-level names included) map to the position of the key, list indexes
        (ints) to the first character of the item. A path that does not exist falls back to
        its nearest existing ancestor, and ``()`` to the start of the file.
        """
        key_path = tuple(key_path)
        if self._source is not None:
            offsets = self._source.offsets
            for length in range(len(key_path), 0, -1):
                offset = offsets.get(key_path[:length])
                if offset is not None:
                    return self._source.lines.position(offset)
        return Position(1, 1)

    def key_position(self, key: str) -> Position:
        """Return where the top-level attribute ``key`` is named.

        Raise KeyError if the file does not set ``key``.
        """
        if self._source is None or (key,) not in self._source.offsets:
            raise KeyError(f"{key!r} is not set in {self.path}")
        return self._source.lines.position(self._source.offsets[(key,)])


def parse_tfvars(text: str, path: str = "<string>") -> TfvarsDocument:
    """Parse the text of a tfvars file. Raise TfvarsSyntaxError if it is not valid."""

    # Editors hide a byte order mark, so columns are counted without it.
    if text.startswith("\ufeff"):
        text = text[1:]

    parser = _Parser(text, path)
    values = parser.parse_document()
    source = _SourceMap(parser.lines, parser.offsets)
    return TfvarsDocument(path, values, parser.warnings, source)


def load_tfvars(path: str | PathLike) -> TfvarsDocument:
    """Read and parse a UTF-8 tfvars file.

    Raise TfvarsSyntaxError if the file cannot be read, is not valid UTF-8 or is not valid
    tfvars syntax.
    """
    path_text = fspath(path)
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as error:
        reason = error.strerror or str(error)
        message = f"Cannot read the file ({reason}). Check the path and its permissions."
        raise TfvarsSyntaxError([Diagnostic(path_text, 1, 1, message)]) from error

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise TfvarsSyntaxError([_decoding_diagnostic(path_text, data, error)]) from error

    return parse_tfvars(text, path_text)


def _decoding_diagnostic(path: str, data: bytes, error: UnicodeDecodeError) -> Diagnostic:
    """Describe the first byte that is not valid UTF-8, with its line and column."""
    line_start = data.rfind(b"\n", 0, error.start) + 1
    if line_start == 0 and data.startswith(codecs.BOM_UTF8):
        line_start = len(codecs.BOM_UTF8)
    line = data.count(b"\n", 0, error.start) + 1
    column = len(data[line_start : error.start].decode("utf-8", "replace")) + 1
    message = (
        f"The file is not valid UTF-8: byte 0x{data[error.start]:02X} cannot be decoded. "
        "Save the file with UTF-8 encoding."
    )
    return Diagnostic(path, line, column, message)


# --- Scanner -------------------------------------------------------------------------------
#
# One compiled pattern reads a token and the blanks and comments before it. A block comment
# never separates items, even when it spans lines, because Terraform ignores it entirely. A
# line comment ends before its newline, so that newline still ends the item.

_BLANKS = r"(?:[ \t]++|/\*(?s:.*?)\*/|(?:\#|//)[^\n]*+)*+"

_TOKEN_PATTERNS = [
    r"(?P<ident>[^\W\d][\w-]*+)",
    r"(?P<punct>[{}\[\],:]|=(?![=>]))",
    r"(?P<newline>\r?\n)",
    # A quoted string ends on its own line. A backslash always takes the next character,
    # so an escaped quote does not end the string.
    r'(?P<string>"(?:[^"\\\r\n]|\\[^\r\n])*+")',
    r"(?P<number>[0-9]++(?:\.[0-9]++)?+(?:[eE][+-]?+[0-9]++)?+)(?![\w.])",
    r"(?P<bad_number>\.?[0-9][\w.]*+)",
    # The closing marker is alone on its line, optionally indented, and a line break must
    # follow it (Terraform 1.11 rejects a marker on the last line of a file without one).
    r"(?P<heredoc><<(?P<dash>-?)(?P<marker>[^\W\d][\w-]*+)\r?\n"
    r"(?P<body>(?:[^\n]*+\n)*?)[ \t]*+(?P=marker)[ \t]*+(?=\r?\n))",
    r"(?P<bad_heredoc><<-?)",
    r'(?P<open_string>")',
    r"(?P<open_comment>/\*)",
    r"(?P<operator>==|!=|<=|>=|&&|\|\||=>|\.\.\.|[-+*/%<>!?.()~])",
    r"(?P<end>\Z)",
    r"(?P<other>(?s:.))",
]

_TOKEN = re.compile(_BLANKS + "(?:" + "|".join(_TOKEN_PATTERNS) + ")")

# Tokens after which the scanner stops, because the text that follows cannot be split into
# tokens reliably. The parser reports them when it reaches them, so earlier errors win.
_LEXICAL_ERRORS = frozenset({"open_string", "bad_heredoc", "open_comment", "other"})

_ESCAPE_OR_TEMPLATE = re.compile(r"[\\$%]")
_QUOTED_SPECIALS = re.compile(
    r"\\(?:u(?P<u4>[0-9A-Fa-f]{4})|U(?P<u8>[0-9A-Fa-f]{8})|(?P<other>.))|\$\$\{|%%\{|[$%]\{",
    re.S,
)
_HEREDOC_OPENER = re.compile(r"<<-?([^\W\d][\w-]*+)(\r?\n)?")
_HEREDOC_SPECIALS = re.compile(r"\$\$\{|%%\{|[$%]\{")
_SIMPLE_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", '"': '"', "\\": "\\"}

# White space as Go's unicode.IsSpace defines it. Terraform 1.11 counts all of it, no-break
# and ideographic spaces included, as indentation of the lines of a <<- heredoc.
_LEADING_SPACE = re.compile(
    "[\t\n\v\f\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*"
)

_BOOLEAN_LIKE_WORDS = frozenset({"yes", "no", "on", "off", "y", "n", "enabled", "disabled"})


def _scan(text: str) -> list[tuple]:
    """Split text into (kind, start, end, match) tokens, ending with an ``end`` token.

    Punctuation tokens use the character itself as their kind. After a lexical error the
    list ends with that error token instead.
    """
    tokens = []
    append = tokens.append
    for match in _TOKEN.finditer(text):
        kind = match.lastgroup
        start = match.start(kind)
        if kind == "punct":
            kind = text[start]
        append((kind, start, match.end(), match))
        if kind in _LEXICAL_ERRORS:
            break
    return tokens


# --- Values --------------------------------------------------------------------------------


def _number_value(literal: str) -> int | float:
    """Convert a number literal to int when it is integral, to float otherwise.

    Terraform has a single number type, so ``1.0`` and ``1e3`` are the integers 1 and 1000.
    Raise ValueError for a number with more than _MAX_INTEGER_DIGITS digits.
    """
    if literal.isdigit() and len(literal) <= _MAX_INTEGER_DIGITS:
        return int(literal)

    number = _decimal(literal)

    # Checking the digits needs no decimal context, whose precision would limit the length.
    _sign, digits, exponent = number.as_tuple()
    if exponent < 0 and any(digits[exponent:]):
        return float(number)
    return int(number)


def _number_key(literal: str) -> str:
    """Format a number used as an object key the way Terraform converts it to a string.

    Raise ValueError for a number with more than _MAX_INTEGER_DIGITS digits.
    """
    text = format(_decimal(literal), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def _decimal(literal: str) -> Decimal:
    """Convert a number literal to Decimal, rejecting exponents that would need huge numbers."""
    number = Decimal(literal)
    if not number.is_zero() and abs(number.adjusted()) >= _MAX_INTEGER_DIGITS:
        raise ValueError(f"more than {_MAX_INTEGER_DIGITS} digits")
    return number


def _normalized(text: str) -> str:
    """Apply Unicode NFC normalization, which HCL applies to every string literal."""
    if text.isascii():
        return text
    return unicodedata.normalize("NFC", text)


def _strip_heredoc_indent(body: str) -> str:
    """Remove the smallest common indentation from the lines of a ``<<-`` heredoc.

    Like HCL, every white-space character counts as one column, and lines that contain only
    white space neither count nor change.
    """
    lines = body.split("\n")
    indents = []
    for line in lines:
        indent = _LEADING_SPACE.match(line).end()
        indents.append(indent)

    text_indents = [indent for line, indent in zip(lines, indents) if indent < len(line)]
    if not text_indents:
        return body

    smallest = min(text_indents)
    stripped = [
        line[smallest:] if indent < len(line) else line for line, indent in zip(lines, indents)
    ]
    return "\n".join(stripped)


# --- Parser --------------------------------------------------------------------------------


class _Parser:
    """A recursive-descent parser over the token list of one file."""

    def __init__(self, text: str, path: str):
        self.text = text
        self.path = path
        self.tokens = _scan(text)
        self.index = 0

        # Offset of each key and list item, by key path, for TfvarsDocument.position_of.
        self.offsets: dict[tuple, int] = {}

        # Key label of every opening bracket by offset, and the offsets of those still open.
        self.bracket_labels: dict[int, str] = {}
        self.open_brackets: list[int] = []

        self.warnings: list[Diagnostic] = []
        self.duplicate_errors: list[Diagnostic] = []
        self.lines = _LineIndex(text)

    # --- Document

    def parse_document(self) -> dict[str, object]:
        """Parse every top-level ``name = value`` line and return the values by name."""
        tokens = self.tokens
        values: dict[str, object] = {}

        while True:
            token = tokens[self.index]
            kind = token[0]
            if kind == "newline":
                self.index += 1
                continue
            if kind == "end":
                break
            if kind != "ident":
                self.reject_attribute_start(token)

            name = token[3].group("ident")
            name_offset = token[1]
            self.index += 1
            self.expect_assignment(name, token)
            value = self.parse_value((name,), name)
            self.expect_line_end(name)

            earlier_offset = self.offsets.get((name,))
            if earlier_offset is not None:
                self.record_duplicate_attribute(name, name_offset, earlier_offset)
                continue
            self.offsets[(name,)] = name_offset
            values[name] = value

        if self.duplicate_errors:
            raise TfvarsSyntaxError(self.duplicate_errors)
        return values

    def expect_assignment(self, name: str, name_token: tuple) -> None:
        token = self.tokens[self.index]
        kind = token[0]
        if kind == "=":
            self.index += 1
            return

        if kind == ":":
            self.fail(
                token[1],
                f"Top-level attributes are set with `=`, not `:`. Write `{name} = ...`.",
            )
        if kind == "{" or (kind == "string" and self.tokens[self.index + 1][0] in ("{", "string")):
            self.fail(
                name_token[1],
                f"Blocks such as `{name} {{ ... }}` are not allowed in a .tfvars file. "
                f"Write `{name} = {{ ... }}` to set an object.",
            )
        if kind == "newline" or kind == "end":
            self.fail(
                name_token[1],
                f"The attribute name `{name}` is not followed by `=`. "
                f"Write `{name} = <value>` on one line.",
            )
        self.reject_token(
            token,
            f"Missing `=` between the attribute name `{name}` and its value. "
            f"Write `{name} = <value>`.",
        )

    def expect_line_end(self, name: str) -> None:
        token = self.tokens[self.index]
        kind = token[0]
        if kind == "newline":
            self.index += 1
            return
        if kind == "end":
            return

        if kind == ",":
            self.fail(
                token[1],
                f"Unexpected comma after the value of `{name}`. Top-level attributes are "
                "separated by line breaks, so remove the comma.",
            )
        if kind == "}" or kind == "]":
            self.reject_stray_closer(token)
        self.reject_after_value(
            token,
            f"Unexpected {self.describe(token)} after the value of `{name}`. "
            "Put each attribute on its own line.",
        )

    def record_duplicate_attribute(self, name: str, offset: int, earlier_offset: int) -> None:
        earlier = self.lines.position(earlier_offset)
        line, column = self.line_and_column(offset)
        message = (
            f"The attribute `{name}` at line {line} is already set at line {earlier.line}, "
            f"column {earlier.column}. Remove one of the two assignments."
        )
        self.duplicate_errors.append(Diagnostic(self.path, line, column, message))

    def reject_attribute_start(self, token: tuple) -> NoReturn:
        kind = token[0]
        if kind == "}" or kind == "]":
            self.reject_stray_closer(token)
        if kind == "string":
            name = self.text[token[1] + 1 : token[2] - 1]
            self.fail(
                token[1],
                f"Attribute names must not be quoted. Write `{name} = ...` without the quotes.",
            )
        if kind == ",":
            self.fail(
                token[1],
                "Unexpected comma. Top-level attributes are separated by line breaks, "
                "so remove the comma.",
            )
        self.reject_token(
            token,
            f"Expected an attribute assignment such as `name = \"value\"`, but found "
            f"{self.describe(token)}.",
        )

    # --- Values

    def parse_value(self, key_path: tuple, label: str) -> object:
        """Parse the value that starts at the current token."""
        token = self.tokens[self.index]
        kind = token[0]

        if kind == "string":
            self.index += 1
            return self.decode_quoted(token)
        if kind == "number":
            self.index += 1
            return self.decode_number(token, token[1], negative=False)
        if kind == "ident":
            return self.parse_word(token)
        if kind == "{":
            return self.parse_object(key_path, label)
        if kind == "[":
            return self.parse_tuple(key_path, label)
        if kind == "heredoc":
            self.index += 1
            return self.decode_heredoc(token)
        if kind == "operator" and token[3].group("operator") == "-":
            return self.parse_negative_number(token)

        self.reject_missing_value(token, label)

    def parse_word(self, token: tuple) -> object:
        word = token[3].group("ident")
        if word == "true":
            self.index += 1
            return True
        if word == "false":
            self.index += 1
            return False
        if word == "null":
            self.index += 1
            return None

        following = self.tokens[self.index + 1]
        following_text = self.text[following[1] : following[2]]
        if following_text == "(":
            self.fail(
                token[1],
                f"Function calls such as `{word}(...)` are not allowed in a .tfvars file. "
                "Write the resulting value instead.",
            )
        if following_text == ".":
            attribute = self.tokens[self.index + 2]
            reference_end = attribute[2] if attribute[0] == "ident" else following[2]
            reference = self.text[token[1] : reference_end]
            self.fail(
                token[1],
                f"References such as `{reference}` are not allowed in a .tfvars file. "
                "Write the value itself.",
            )
        if word.lower() in ("true", "false", "null"):
            self.fail(
                token[1],
                f"`{word}` is not a valid value. Write `{word.lower()}` in lowercase, "
                f'or "{word}" for a string.',
            )
        if word.lower() in _BOOLEAN_LIKE_WORDS:
            self.fail(
                token[1],
                f"The bare word `{word}` is not a valid value because a string needs quotes. "
                f'Write "{word}", or true or false for a boolean.',
            )
        self.fail(
            token[1],
            f"The bare word `{word}` is not a valid value because a string needs quotes. "
            f'Write "{word}".',
        )

    def parse_negative_number(self, minus_token: tuple) -> int | float:
        # HCL allows any number of unary minus signs, with blanks between them.
        negative = False
        token = minus_token
        while token[0] == "operator" and token[3].group("operator") == "-":
            negative = not negative
            self.index += 1
            token = self.tokens[self.index]

        if token[0] != "number":
            self.fail(
                minus_token[1],
                "A minus sign must be followed by a number, and other expressions are not "
                "supported in a .tfvars file. Write the resulting value.",
            )
        self.index += 1
        return self.decode_number(token, minus_token[1], negative)

    def decode_number(self, token: tuple, offset: int, negative: bool) -> int | float:
        literal = token[3].group("number")
        try:
            number = _number_value(literal)
        except ValueError:
            self.reject_huge_number(offset, literal)
        if negative:
            return -number
        return number

    def reject_huge_number(self, offset: int, literal: str) -> NoReturn:
        self.fail(
            offset,
            f"The number `{literal}` needs more than {_MAX_INTEGER_DIGITS} digits, which this "
            "reader does not support. Write a number of reasonable size.",
        )

    def decode_quoted(self, token: tuple) -> str:
        """Return the text of a quoted string, with escapes decoded."""
        content_start = token[1] + 1
        content = self.text[content_start : token[2] - 1]
        if _ESCAPE_OR_TEMPLATE.search(content) is None:
            return _normalized(content)

        pieces = []
        position = 0
        for match in _QUOTED_SPECIALS.finditer(content):
            pieces.append(content[position : match.start()])
            pieces.append(self.decode_special(match, content_start))
            position = match.end()
        pieces.append(content[position:])
        return _normalized("".join(pieces))

    def decode_special(self, match: re.Match, content_start: int) -> str:
        """Decode one escape sequence, or reject a template sequence, found in a quoted string."""
        sequence = match.group()
        offset = content_start + match.start()

        if sequence == "$${" or sequence == "%%{":
            return sequence[1:]
        if sequence[0] != "\\":
            self.reject_template(offset, sequence)

        hex_digits = match.group("u4") or match.group("u8")
        if hex_digits is not None:
            code_point = int(hex_digits, 16)
            if 0xD800 <= code_point <= 0xDFFF or code_point > 0x10FFFF:
                self.fail(
                    offset,
                    f"The escape `{sequence}` is not a Unicode character that UTF-8 can "
                    "encode. Write the character itself or its correct code point.",
                )
            return chr(code_point)

        selector = match.group("other")
        if selector in _SIMPLE_ESCAPES:
            return _SIMPLE_ESCAPES[selector]
        if selector == "u":
            self.fail(offset, "The escape `\\u` must be followed by four hexadecimal digits.")
        if selector == "U":
            self.fail(offset, "The escape `\\U` must be followed by eight hexadecimal digits.")
        self.fail(
            offset,
            f"`\\{selector}` is not a valid escape sequence. Write `\\\\` for a literal "
            'backslash, or use one of \\n, \\r, \\t, \\", \\\\, \\uNNNN and \\UNNNNNNNN.',
        )

    def decode_heredoc(self, token: tuple) -> str:
        """Return the text of a heredoc. Backslashes in a heredoc are literal text."""
        match = token[3]
        body = match.group("body")
        body_start = match.start("body")

        for special in _HEREDOC_SPECIALS.finditer(body):
            if special.group() not in ("$${", "%%{"):
                self.reject_template(body_start + special.start(), special.group())

        if match.group("dash"):
            body = _strip_heredoc_indent(body)
        body = body.replace("$${", "${").replace("%%{", "%{")
        return _normalized(body)

    def reject_template(self, offset: int, sequence: str) -> NoReturn:
        self.fail(
            offset,
            f"The string contains the template sequence `{sequence}`, and templates are not "
            f"allowed in a .tfvars file. Write the value itself, or `{sequence[0]}{sequence}` "
            f"for a literal `{sequence}`.",
        )

    def reject_missing_value(self, token: tuple, label: str) -> NoReturn:
        kind = token[0]
        if kind == "newline" or kind == "end" or kind == "," or kind == "}" or kind == "]":
            equals_offset = self.tokens[self.index - 1][1]
            self.fail(
                equals_offset,
                f"`{label}` has no value after `{self.text[equals_offset]}`. Write the value "
                'on the same line, such as "text", 42, true, [...] or { ... }.',
            )
        if kind == "bad_number":
            literal = token[3].group("bad_number")
            self.fail(
                token[1],
                f"`{literal}` is not a valid number. Write numbers like 42, -7, 3.14 or 1.5e3.",
            )
        self.reject_token(
            token,
            f"Expected a value for `{label}`, but found {self.describe(token)}. Write a value "
            'such as "text", 42, true, [...] or { ... }.',
        )

    # --- Lists and objects

    def parse_tuple(self, key_path: tuple, label: str) -> list:
        tokens = self.tokens
        open_token = tokens[self.index]
        self.open_bracket(open_token, label)
        self.index += 1
        items: list[object] = []

        while True:
            # Line breaks carry no meaning inside brackets.
            token = tokens[self.index]
            while token[0] == "newline":
                self.index += 1
                token = tokens[self.index]

            kind = token[0]
            if kind == "]":
                self.close_bracket()
                return items
            if kind == ",":
                self.reject_comma(token)
            if kind == "}" or kind == "end":
                self.reject_unclosed(open_token, token)
            if (
                kind == "ident"
                and items
                and tokens[self.index + 1][0] in ("=", ":")
                and self.starts_line(token[1])
            ):
                self.reject_missing_closer_before(open_token, token)

            item_path = key_path + (len(items),)
            self.offsets[item_path] = token[1]
            items.append(self.parse_value(item_path, f"{label}[{len(items)}]"))

            token = tokens[self.index]
            while token[0] == "newline":
                self.index += 1
                token = tokens[self.index]

            kind = token[0]
            if kind == ",":
                self.index += 1
            elif kind != "]":
                if kind == "}" or kind == "end":
                    self.reject_unclosed(open_token, token)
                self.reject_after_value(
                    token,
                    f"Missing comma before {self.describe(token)} in the list `{label}`. "
                    "Separate list items with commas.",
                )

    def parse_object(self, key_path: tuple, label: str) -> dict:
        tokens = self.tokens
        open_token = tokens[self.index]
        self.open_bracket(open_token, label)
        self.index += 1
        items: dict[str, object] = {}

        while True:
            token = tokens[self.index]
            while token[0] == "newline":
                self.index += 1
                token = tokens[self.index]

            if token[0] == "}":
                self.close_bracket()
                return items

            key = self.parse_object_key(open_token, token)
            key_token = token
            self.index += 1

            # Unlike in lists, a line break inside an object ends the item.
            token = tokens[self.index]
            if token[0] != "=" and token[0] != ":":
                self.reject_missing_equals(key, key_token, token)
            self.index += 1

            item_path = key_path + (key,)
            if key in items:
                self.record_duplicate_key(key, item_path, key_token[1])
            self.offsets[item_path] = key_token[1]
            items[key] = self.parse_value(item_path, key)

            token = tokens[self.index]
            kind = token[0]
            if kind == "," or kind == "newline":
                self.index += 1
            elif kind == "}":
                self.close_bracket()
                return items
            elif kind == "]" or kind == "end":
                self.reject_unclosed(open_token, token)
            else:
                self.reject_after_value(
                    token,
                    f"Missing line break or comma before {self.describe(token)} in the object "
                    f"`{label}`. Put each item on its own line or separate items with commas.",
                )

    def parse_object_key(self, open_token: tuple, token: tuple) -> str:
        kind = token[0]
        if kind == "ident":
            return token[3].group("ident")
        if kind == "string":
            return self.decode_quoted(token)
        if kind == "number":
            literal = token[3].group("number")
            try:
                return _number_key(literal)
            except ValueError:
                self.reject_huge_number(token[1], literal)

        if kind == ",":
            self.reject_comma(token)
        if kind == "]" or kind == "end":
            self.reject_unclosed(open_token, token)
        label = self.bracket_labels[open_token[1]]
        self.reject_token(
            token,
            f"Expected a key in the object `{label}`, but found {self.describe(token)}. "
            'Write items as `key = value` or `"key" = value`.',
        )

    def reject_missing_equals(self, key: str, key_token: tuple, token: tuple) -> NoReturn:
        if token[0] == "newline":
            self.fail(
                key_token[1],
                f"The key `{key}` is not followed by `=` on the same line. "
                f"Write `{key} = <value>` on one line.",
            )
        if token[0] in ("}", "]", ",", "end"):
            self.fail(
                key_token[1],
                f"The key `{key}` has no `=` and no value. Write `{key} = <value>`.",
            )
        self.reject_token(
            token,
            f"Missing `=` between the key `{key}` and its value. Write `{key} = <value>`.",
        )

    def record_duplicate_key(self, key: str, item_path: tuple, offset: int) -> None:
        # Terraform keeps the last value of a repeated object key without a warning.
        earlier = self.lines.position(self.offsets[item_path])
        line, column = self.line_and_column(offset)
        message = (
            f"The key `{key}` is set twice in the same object, so its earlier value at line "
            f"{earlier.line}, column {earlier.column} is ignored. Remove one of the two."
        )
        self.warnings.append(Diagnostic(self.path, line, column, message))

        # Keys under the ignored value no longer exist.
        depth = len(item_path)
        stale_paths = [path for path in self.offsets if path[:depth] == item_path]
        for path in stale_paths:
            del self.offsets[path]

    def open_bracket(self, token: tuple, label: str) -> None:
        if len(self.open_brackets) >= MAX_NESTING_DEPTH:
            self.fail(
                token[1],
                f"Values are nested more than {MAX_NESTING_DEPTH} levels deep. "
                "Flatten the structure.",
            )
        self.bracket_labels[token[1]] = label
        self.open_brackets.append(token[1])

    def close_bracket(self) -> None:
        self.open_brackets.pop()
        self.index += 1

    def reject_comma(self, token: tuple) -> NoReturn:
        previous_index = self.previous_significant_index(self.index - 1)
        previous = self.tokens[previous_index]
        if previous[0] == ",":
            item = self.tokens[self.previous_significant_index(previous_index - 1)]
            self.fail(
                token[1],
                f"Doubled comma after {self.describe(item)}. Remove one of the two commas.",
            )
        if previous[0] == "{" or previous[0] == "[":
            self.fail(token[1], "Unexpected comma before the first item. Remove it.")

        # Only an object can get here after an item, and there a line break already ends it.
        previous_line, _ = self.line_and_column(previous[1])
        self.fail(
            token[1],
            "A comma must be on the same line as the item before it. Move it to the end of "
            f"line {previous_line}, or remove it.",
        )

    def previous_significant_index(self, index: int) -> int:
        while self.tokens[index][0] == "newline":
            index -= 1
        return index

    # --- Error reporting

    def fail(self, offset: int, message: str) -> NoReturn:
        line, column = self.line_and_column(offset)
        diagnostic = Diagnostic(self.path, line, column, message)
        raise TfvarsSyntaxError(self.duplicate_errors + [diagnostic])

    def reject_token(self, token: tuple, message: str) -> NoReturn:
        """Raise the lexical error of ``token`` if it has one, or else ``message`` at the token."""
        kind = token[0]
        if kind in _LEXICAL_ERRORS:
            self.reject_lexical_error(token)
        if kind == "operator":
            self.reject_operator(token)
        self.fail(token[1], message)

    def reject_after_value(self, token: tuple, message: str) -> NoReturn:
        """Raise for a token that follows a complete value where a separator is expected."""
        if token[0] == "operator":
            self.reject_operator(token)
        self.reject_token(token, message)

    def reject_operator(self, token: tuple) -> NoReturn:
        operator = self.text[token[1] : token[2]]
        self.fail(
            token[1],
            f"`{operator}` starts an expression, and this reader supports only plain values in "
            "a .tfvars file. Write the resulting value instead.",
        )

    def reject_lexical_error(self, token: tuple) -> NoReturn:
        kind = token[0]
        start = token[1]

        if kind == "open_string":
            line, column = self.line_and_column(start)
            self.fail(
                start,
                f"The string opened at line {line}, column {column} is not terminated. "
                'Add the closing `"` on the same line, because quoted strings cannot span '
                "lines (use a heredoc such as <<EOT for text with several lines).",
            )
        if kind == "open_comment":
            line, column = self.line_and_column(start)
            self.fail(
                start,
                f"The comment opened with `/*` at line {line}, column {column} is never "
                "closed. Add `*/` where the comment ends.",
            )
        if kind == "bad_heredoc":
            self.reject_bad_heredoc(start)

        character = self.text[start]
        if character == "\r":
            self.fail(
                start,
                "The file contains a carriage return without a line feed. Save the file with "
                "LF or CRLF line endings.",
            )
        if character == "'":
            self.fail(start, "Strings must use double quotes, as in \"text\". Replace the `'`.")
        self.fail(
            start,
            f"Unexpected character {character!r} (U+{ord(character):04X}). Remove it, or "
            "put it inside a quoted string.",
        )

    def reject_bad_heredoc(self, start: int) -> NoReturn:
        line, column = self.line_and_column(start)
        opener = _HEREDOC_OPENER.match(self.text, start)
        if opener is None:
            self.fail(
                start,
                "A heredoc needs a marker name right after `<<`, as in `<<EOT` or `<<-EOT`.",
            )

        marker = opener.group(1)
        if opener.group(2) is None:
            self.fail(
                start,
                f"The heredoc opener `{opener.group()}` must end its line. Move the text "
                "after it to the next line.",
            )

        body = self.text[opener.end() :]
        unterminated_last_line = re.search(
            rf"(?:\A|\n)[ \t]*{re.escape(marker)}[ \t]*\Z", body
        )
        if unterminated_last_line is not None:
            self.fail(
                start,
                f"The heredoc `{opener.group().strip()}` opened at line {line}, column "
                f"{column} ends with `{marker}` on the last line of the file, and Terraform "
                "needs a line break after it. Add a line break at the end of the file.",
            )

        crowded_marker = re.search(
            rf"^[ \t]*{re.escape(marker)}(?![\w-])[ \t]*\S.*$", body, re.M
        )
        if crowded_marker is not None:
            marker_line, _ = self.line_and_column(opener.end() + crowded_marker.start())
            self.fail(
                start,
                f"The heredoc `{opener.group().strip()}` opened at line {line}, column "
                f"{column} is never closed, because its closing marker must be alone on its "
                f"line. Move the text after `{marker}` on line {marker_line} to the "
                "next line.",
            )
        self.fail(
            start,
            f"The heredoc `{opener.group().strip()}` opened at line {line}, column {column} "
            f"is never closed. Add a line containing only `{marker}` after its text.",
        )

    def reject_stray_closer(self, token: tuple) -> NoReturn:
        closer = token[0]
        opener = "{" if closer == "}" else "["
        self.fail(
            token[1],
            f"Unexpected `{closer}`, because no `{opener}` is open here. Remove it, "
            "or add the missing opening bracket above.",
        )

    def reject_missing_closer_before(self, open_token: tuple, token: tuple) -> NoReturn:
        """Raise for a list that is still open when an object item such as ``b = 2`` starts."""
        opener_line, opener_column = self.line_and_column(open_token[1])
        line, _ = self.line_and_column(token[1])
        label = self.bracket_labels[open_token[1]]
        key = token[3].group("ident")
        self.fail(
            open_token[1],
            f"The `[` opened for `{label}` at line {opener_line}, column {opener_column} is "
            f"not closed before `{key}` at line {line}. Add the missing `]` before `{key}`.",
        )

    def reject_unclosed(self, open_token: tuple, token: tuple) -> NoReturn:
        """Raise for a bracket that the end of the file or a bracket of the other kind closes."""
        if token[0] == "end":
            self.reject_unclosed_at_end()

        opener = open_token[0]
        closer = token[0]
        expected_closer = "}" if opener == "{" else "]"
        label = self.bracket_labels[open_token[1]]
        opener_line, opener_column = self.line_and_column(open_token[1])
        closer_line, closer_column = self.line_and_column(token[1])
        where_opened = (
            f"The `{opener}` opened for `{label}` at line {opener_line}, column {opener_column}"
        )

        # A closer that starts a line less indented than the opener's line belongs to an
        # outer bracket, so the person forgot this bracket's closer.
        if self.starts_line(token[1]):
            if self.indent_at(token[1]) < self.indent_at(open_token[1]):
                self.fail(
                    open_token[1],
                    f"{where_opened} is not closed before the `{closer}` at line "
                    f"{closer_line}, column {closer_column}. Add the missing `{expected_closer}` "
                    f"before line {closer_line}.",
                )
        elif len(self.open_brackets) >= 2:
            # On one line, a closer that fits the enclosing bracket most likely belongs to it.
            outer_opener = self.text[self.open_brackets[-2]]
            if (outer_opener, closer) in (("{", "}"), ("[", "]")):
                self.fail(
                    token[1],
                    f"{where_opened} is not closed before the `{closer}` at line "
                    f"{closer_line}, column {closer_column}. Add the missing `{expected_closer}` "
                    f"before the `{closer}`.",
                )
        self.fail(
            token[1],
            f"{where_opened} is closed by `{closer}` at line {closer_line}, column "
            f"{closer_column}. Replace the `{closer}` with `{expected_closer}`.",
        )

    def reject_unclosed_at_end(self) -> NoReturn:
        """Raise for the brackets still open at the end of the file.

        Bracket nesting alone blames the outermost bracket when an inner one lacks its
        closer, so indentation decides instead. A closer that starts a line belongs to the
        open bracket whose line has the same indentation. The open brackets on more indented
        lines in between are the ones never closed.
        """
        forgotten = self.find_forgotten_brackets()
        diagnostics = []
        for offset in forgotten:
            opener = self.text[offset]
            expected_closer = "}" if opener == "{" else "]"
            label = self.bracket_labels.get(offset, "")
            line, column = self.line_and_column(offset)
            end_line = self.block_end_line(offset)
            if end_line is None:
                where_to_add = "at the end of the file"
            else:
                where_to_add = f"before line {end_line}"
            message = (
                f"The `{opener}` opened for `{label}` at line {line}, column {column} is never "
                f"closed. Add the missing `{expected_closer}` {where_to_add}."
            )
            diagnostics.append(Diagnostic(self.path, line, column, message))
        raise TfvarsSyntaxError(self.duplicate_errors + diagnostics)

    def find_forgotten_brackets(self) -> list[int]:
        """Return the offsets of the opening brackets that lack a closer, most likely first."""
        # Each entry: offset, bracket character, and indentation of the bracket's line.
        pending: list[tuple[int, str, int]] = []
        forgotten: list[int] = []

        for kind, start, _end, _match in self.tokens:
            if kind == "{" or kind == "[":
                pending.append((start, kind, self.indent_at(start)))
                continue
            if kind != "}" and kind != "]":
                continue

            if self.starts_line(start):
                matching_opener = "{" if kind == "}" else "["
                indent = self.indent_at(start)
                while (
                    len(pending) >= 2
                    and pending[-1][2] > indent
                    and (matching_opener, indent) in [entry[1:] for entry in pending[:-1]]
                ):
                    forgotten.append(pending.pop()[0])
            if pending:
                pending.pop()

        forgotten.extend(offset for offset, _bracket, _indent in reversed(pending))
        if not forgotten:
            # Indentation blamed no bracket, so fall back to plain nesting.
            forgotten = list(reversed(self.open_brackets))
        return forgotten

    def block_end_line(self, open_offset: int) -> int | None:
        """Return the first line after a bracket that is not indented deeper than its line."""
        open_indent = self.indent_at(open_offset)
        for kind, start, _end, _match in self.tokens:
            if start <= open_offset or kind == "newline" or kind == "end":
                continue
            if self.starts_line(start) and self.indent_at(start) <= open_indent:
                return self.line_and_column(start)[0]
        return None

    # --- Positions

    def line_and_column(self, offset: int) -> tuple[int, int]:
        position = self.lines.position(offset)
        return position.line, position.column

    def indent_at(self, offset: int) -> int:
        """Return the number of blanks that start the line containing ``offset``."""
        line = self.text[self.lines.line_start(offset) : offset + 1]
        return len(line) - len(line.lstrip(" \t"))

    def starts_line(self, offset: int) -> bool:
        return self.text[self.lines.line_start(offset) : offset].strip(" \t") == ""

    def describe(self, token: tuple) -> str:
        kind = token[0]
        if kind == "newline":
            return "the end of the line"
        if kind == "end":
            return "the end of the file"
        if kind == "string":
            return f"the string {token[3].group('string')}"
        if kind == "heredoc":
            return "a heredoc"
        if kind in _LEXICAL_ERRORS:
            return repr(self.text[token[1]])
        return f"`{self.text[token[1] : token[2]]}`"
