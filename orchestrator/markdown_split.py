"""Splitting a Markdown report into pull-request comments below GitHub's size limit.

GitHub rejects a comment body of 65,536 characters or more, counted in characters. The report
is cut on line boundaries, and every part is valid Markdown on its own. A code fence or
``<details>`` block that a cut falls into is closed at the end of the part and opened again at
the start of the next one. A table cut after its header gets its header rows again. Whole
``<details>`` sections move to the next part when they would fit there but not in the current one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

GITHUB_COMMENT_LIMIT = 65536

# CommonMark fences: at most three spaces of indentation, three or more backticks or tildes.
# A backtick fence's info string cannot contain a backtick.
_FENCE_OPEN = re.compile(r"^ {0,3}(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
_FENCE_CLOSE = re.compile(r"^ {0,3}(?P<fence>`{3,}|~{3,})[ \t]*$")
_DETAILS_OPEN = re.compile(r"^\s*<details(?:\s[^>]*)?>\s*(?:<summary>(?P<summary>.*)</summary>\s*)?$", re.IGNORECASE)
_DETAILS_CLOSE = re.compile(r"^\s*</details>\s*$", re.IGNORECASE)
_SUMMARY = re.compile(r"^\s*<summary>(?P<summary>.*)</summary>\s*$", re.IGNORECASE)
_TABLE_DELIMITER = re.compile(r"^\s*\|?\s*:?-+:?\s*(?:\|\s*:?-+:?\s*)*\|?\s*$")


@dataclass(frozen=True)
class _Fence:
    opener: str
    char: str
    length: int


@dataclass(frozen=True)
class _Details:
    summary: str | None


@dataclass(frozen=True)
class _Table:
    header: str
    delimiter: str


# The constructs open after a line, outermost first.
State = tuple


def _is_table_row(line: str) -> bool:
    return line.lstrip().startswith("|")


def _closes_fence(fence: _Fence, line: str) -> bool:
    match = _FENCE_CLOSE.match(line)
    return bool(match) and match["fence"][0] == fence.char and len(match["fence"]) >= fence.length


def _without_innermost_details(state: State) -> State | None:
    for index in range(len(state) - 1, -1, -1):
        if isinstance(state[index], _Details):
            return state[:index]
    return None


def _advance(state: State, line: str, previous_line: str | None) -> State:
    """Return the constructs open after ``line``, given those open before it."""
    top = state[-1] if state else None
    if isinstance(top, _Fence):
        return state[:-1] if _closes_fence(top, line) else state
    if isinstance(top, _Table):
        if _is_table_row(line):
            return state
        # The table ends here, and the line is read like any other.
        state = state[:-1]
        top = state[-1] if state else None

    fence = _FENCE_OPEN.match(line)
    if fence and not (fence["fence"][0] == "`" and "`" in fence["info"]):
        return state + (_Fence(line, fence["fence"][0], len(fence["fence"])),)

    opened = _DETAILS_OPEN.match(line)
    if opened:
        return state + (_Details(opened["summary"]),)
    if _DETAILS_CLOSE.match(line):
        closed = _without_innermost_details(state)
        # A stray closing tag is ordinary text.
        return state if closed is None else closed

    summary = _SUMMARY.match(line)
    if summary and isinstance(top, _Details) and top.summary is None:
        return state[:-1] + (_Details(summary["summary"]),)
    if previous_line is not None and _is_table_row(previous_line) and _TABLE_DELIMITER.match(line):
        return state + (_Table(previous_line, line),)
    return state


def _closing_lines(state: State) -> list[str]:
    """Return the lines that close every construct in ``state``, innermost first."""
    lines: list[str] = []
    for frame in reversed(state):
        if isinstance(frame, _Fence):
            lines.append(frame.char * frame.length)
        elif isinstance(frame, _Details):
            # The blank line ends a paragraph or list before the HTML tag.
            lines += ["", "</details>"]
    return lines


def _reopening_lines(state: State) -> list[str]:
    """Return the lines that open every construct in ``state`` again, outermost first."""
    lines: list[str] = []
    for frame in state:
        if isinstance(frame, _Details):
            summary = f"{frame.summary} (continued)" if frame.summary else "(continued)"
            # GitHub renders Markdown inside <details> only after a blank line.
            lines += ["<details>", f"<summary>{summary}</summary>", ""]
        elif isinstance(frame, _Fence):
            lines.append(frame.opener)
        elif isinstance(frame, _Table):
            lines += [frame.header, frame.delimiter]
    return lines


def _cost(lines: list[str]) -> int:
    """Characters that ``lines`` add to a part, counting one newline after each."""
    return sum(len(line) + 1 for line in lines)


class _Layout:
    """The report's lines with the constructs open after each and the extent of each top-level section."""

    def __init__(self, lines: list[str]):
        self.lines = lines
        self.states: list[State] = []
        state: State = ()
        previous = None
        for line in lines:
            state = _advance(state, line, previous)
            self.states.append(state)
            previous = line

        # prefix[i] is the cost of lines[:i], so a run of lines costs one subtraction.
        self.prefix = [0]
        for line in lines:
            self.prefix.append(self.prefix[-1] + len(line) + 1)

        # Top-level <details> sections: index of the opening line -> index of the closing line.
        self.section_end: dict[int, int] = {}
        start = None
        for index, after in enumerate(self.states):
            if start is None and not self.state_before(index) and after and isinstance(after[0], _Details):
                start = index
            if start is not None and not after:
                self.section_end[start] = index
                start = None
        if start is not None:
            self.section_end[start] = len(lines) - 1

    def state_before(self, index: int) -> State:
        return self.states[index - 1] if index > 0 else ()

    def span_cost(self, first: int, last: int) -> int:
        return self.prefix[last + 1] - self.prefix[first]

    def glued_to_next(self, index: int) -> bool:
        """Return whether line ``index + 1`` must stay in the same part as line ``index``."""
        if index + 1 >= len(self.lines):
            return False
        current, after_next = self.states[index], self.states[index + 1]
        # A table's header row and its delimiter row.
        if after_next and isinstance(after_next[-1], _Table) and not (current and isinstance(current[-1], _Table)):
            return True
        # A <details> line and the <summary> line that names it.
        opened_details = len(current) == len(self.state_before(index)) + 1 and isinstance(current[-1], _Details) and current[-1].summary is None
        return opened_details and len(after_next) == len(current) and isinstance(after_next[-1], _Details) and after_next[-1].summary is not None


@dataclass
class _Packed:
    parts: list[list[str]]
    # Index of the first part line that comes from the report (after header and reopened constructs).
    content_starts: list[int]
    # First line left out when max_parts cut the report short, None when every line is in a part.
    stopped_at: int | None = None
    stopped_inside_line: bool = False


def _header_placeholder(digits: int) -> str:
    return _part_header(10**digits - 1, 10**digits - 1)


def _part_header(number: int, total: int) -> str:
    return f"_Part {number} of {total}_"


def _cut_short_note(lines_left: int, sections_left: int, max_parts: int, full_report_hint: str) -> str:
    """Return the note that ends the last part when the report needs more than ``max_parts`` parts."""
    left_out = f"{lines_left} more line(s)" + (f", including {sections_left} whole section(s)," if sections_left else "")
    note = f"**Report cut short:** {left_out} did not fit in {max_parts} comment(s)."
    if full_report_hint:
        note += f" The full report is at {full_report_hint}."
    return note


class _Packer:
    """Fill parts greedily, line by line, keeping the constructs open at each cut balanced."""

    def __init__(self, layout: _Layout, limit: int, header_digits: int, max_parts: int | None, note_lines: list[str]):
        self.layout = layout
        self.limit = limit
        self.header = _header_placeholder(header_digits)
        self.max_parts = max_parts
        self.note_cost = _cost(note_lines)

    def _reserve(self, number: int) -> int:
        """Room kept free in part ``number`` for the cut-short note."""
        return self.note_cost if self.max_parts is not None and number == self.max_parts else 0

    def _opening(self, number: int, state: State) -> list[str]:
        return ([self.header, ""] if number > 1 else []) + _reopening_lines(state)

    def _fits(self, used: int, added: int, after: State, number: int) -> bool:
        """Return whether part ``number`` stays below the limit after adding ``added`` characters and closing ``after``."""
        # ``used`` and ``added`` count a newline after every line, but the part's last line has none.
        return used + added + _cost(_closing_lines(after)) + self._reserve(number) - 1 < self.limit

    def pack(self) -> _Packed:
        layout = self.layout
        lines = layout.lines
        packed = _Packed(parts=[], content_starts=[])
        index = 0
        pending: str | None = None  # the rest of lines[index] after a cut inside that line
        unglued_until = -1  # lines up to this index are placed one at a time
        state: State = ()

        while index < len(lines):
            number = len(packed.parts) + 1
            last_allowed = self.max_parts is not None and number == self.max_parts
            part = self._opening(number, state)
            base = used = _cost(part)
            packed.content_starts.append(len(part))

            while index < len(lines):
                if pending is None and index in layout.section_end and used > base and not last_allowed:
                    # Start a section in a new part when it fits there but not in this one.
                    end = layout.section_end[index]
                    section = layout.span_cost(index, end)
                    after = layout.states[end]
                    if not self._fits(used, section, after, number) and self._fits(_cost(self._opening(number + 1, state)), section, after, number + 1):
                        break

                if pending is not None:
                    last = index
                    texts = [pending]
                else:
                    last = index
                    while last > unglued_until and layout.glued_to_next(last):
                        last += 1
                    texts = lines[index:last + 1]
                after = layout.states[last]

                if self._fits(used, _cost(texts), after, number):
                    part += texts
                    used += _cost(texts)
                    index, pending, state = last + 1, None, after
                    continue
                if last_allowed:
                    packed.stopped_at = index
                    packed.stopped_inside_line = pending is not None
                    break
                fresh = _cost(self._opening(number + 1, state))
                if used > base and self._fits(fresh, _cost(texts), after, number + 1):
                    break
                if last > index:
                    # Not even an empty part has room for these lines together, so they are placed one by one.
                    unglued_until = last
                    continue

                # A line longer than a whole part: place as much as fits here, the rest goes on.
                text = texts[0]
                room = self.limit - used - _cost(_closing_lines(state)) - self._reserve(number) - 1
                if room < 1:
                    if used > base:
                        break
                    raise ValueError(f"limit {self.limit} is too small: a part has no room for one character after its header and reopened blocks; use a larger limit")
                part.append(text[:room])
                used += room + 1
                pending = text[room:]
                break

            part += _closing_lines(state)
            packed.parts.append(part)
            if packed.stopped_at is not None:
                break

        # Blank lines between sections can be all that is left for the last part.
        last_content = packed.parts[-1][packed.content_starts[-1]:] if packed.parts else []
        if len(packed.parts) > 1 and packed.stopped_at is None and not any(line.strip() for line in last_content):
            packed.parts.pop()
            packed.content_starts.pop()
        return packed


def _lines_left(layout: _Layout, packed: _Packed) -> tuple[int, int]:
    """Count the lines and the whole top-level sections that a cut-short split leaves out."""
    first = packed.stopped_at
    whole_sections = sum(1 for start in layout.section_end if start > first or (start == first and not packed.stopped_inside_line))
    return len(layout.lines) - first, whole_sections


def split_markdown(text: str, limit: int = GITHUB_COMMENT_LIMIT, max_parts: int = 10, full_report_hint: str = "") -> list[str]:
    """Split Markdown into parts of fewer than ``limit`` characters each, cut on line boundaries.

    Text shorter than ``limit`` comes back unchanged as the only part. Otherwise:

    - the text before the first ``<details>`` section (the summary) is entirely in the first
      part, unless it alone is too long for one part;
    - code fences, ``<details>`` blocks and tables cut between parts are closed at the end of a
      part and opened again, with their fence, summary or header rows, in the next;
    - every part after the first starts with a line such as ``_Part 2 of 3_``;
    - a line longer than a part is cut into pieces, each on its own line;
    - when the text needs more than ``max_parts`` parts, the last part ends with a note that
      counts the lines and sections left out and names ``full_report_hint``;
    - the text's final newline, and blank lines that would fill a part of their own at the
      end, are dropped.

    Callers that add text to a part, such as a hidden marker, must lower ``limit`` by its length.
    Raises ValueError when ``max_parts`` is below 1 or ``limit`` is too small for the reopened
    blocks of a part.
    """
    if max_parts < 1:
        raise ValueError(f"max_parts must be at least 1, not {max_parts}")
    if len(text) < limit:
        return [text]

    lines = text.split("\n")
    if len(lines) > 1 and lines[-1] == "":
        # The final newline would otherwise become a part of its own after a cut.
        lines.pop()
    layout = _Layout(lines)

    # The header's width depends on the number of parts, so pack again when that has more digits.
    digits = 1
    while True:
        packed = _Packer(layout, limit, digits, None, []).pack()
        if len(str(len(packed.parts))) <= digits:
            break
        digits = len(str(len(packed.parts)))

    if len(packed.parts) > max_parts:
        # The note is sized for the largest counts, so the actual note always fits in its place.
        widest_note = ["", _cut_short_note(len(lines), len(layout.section_end), max_parts, full_report_hint)]
        packed = _Packer(layout, limit, len(str(max_parts)), max_parts, widest_note).pack()
        if packed.stopped_at is not None:
            lines_left, sections_left = _lines_left(layout, packed)
            packed.parts[-1] += ["", _cut_short_note(lines_left, sections_left, max_parts, full_report_hint)]

    total = len(packed.parts)
    texts = []
    for number, part in enumerate(packed.parts, start=1):
        if number > 1:
            part[0] = _part_header(number, total)
        texts.append("\n".join(part))
    return texts
