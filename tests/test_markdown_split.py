"""Splitting the Markdown report into GitHub comments: size, balance, order, and nothing lost."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from orchestrator.markdown_report import render_markdown, resource_changes
from orchestrator.markdown_split import GITHUB_COMMENT_LIMIT, split_markdown
from orchestrator.plan_summary import count_changes

from test_markdown_report import fence_problems, report_with, shard_result, write_plan

ACTIONS = (["create"], ["update"], ["delete"], ["delete", "create"])
NOTE = re.compile(r"\*\*Report cut short:\*\* (\d+) more line\(s\)(?:, including (\d+) whole section\(s\),)? did not fit in (\d+) comment\(s\)\.")


def large_report(tmp_path, shards: int = 4, resources_per_shard: int = 200, marker: str = "") -> tuple[str, list[str]]:
    """Render a plan report of ``shards`` shards with long resource addresses; return it and its resource lines."""
    results = []
    expected = []
    for shard in range(shards):
        changes = [
            (f'module.storage_{shard}.module.bucket["team-{index:04d}"].aws_s3_object.{marker}this["{"k" * 40}-{shard}-{index:04d}"]', ACTIONS[index % 4], {})
            for index in range(resources_per_shard)
        ]
        plan = write_plan(tmp_path / f"changes-{shard}.json", changes)
        expected += resource_changes(plan)
        counts = count_changes(json.loads((tmp_path / f"changes-{shard}.json").read_text(encoding="utf-8")))
        results.append(shard_result(tmp_path, shard_id=f"prod/storage-{shard}/s3", project=f"storage-{shard}", plan_json_file=plan, counts=counts, notes=[f"note of shard {shard}"]))
    return render_markdown(report_with(*results)), expected


def all_lines(parts: list[str]) -> list[str]:
    return [line for part in parts for line in part.split("\n")]


def check_parts(parts: list[str], limit: int) -> None:
    """Assert the size, balance and numbering of every part."""
    for number, part in enumerate(parts, start=1):
        assert len(part) < limit, f"part {number} has {len(part)} characters"
        assert fence_problems(part) == [], f"part {number}: {fence_problems(part)}"
        if number > 1:
            assert part.startswith(f"_Part {number} of {len(parts)}_\n\n"), f"part {number} starts with {part[:40]!r}"


def test_short_text_is_returned_unchanged():
    text = "### Title\n\n<details>\n<summary>a</summary>\n\n```\nx\n```\n\n</details>\n"
    assert split_markdown(text) == [text]


def test_large_report_splits_below_github_limit(tmp_path):
    text, expected = large_report(tmp_path, shards=4, resources_per_shard=200)
    assert len(text) > GITHUB_COMMENT_LIMIT  # the case needs at least two parts

    parts = split_markdown(text)

    assert len(parts) >= 2
    check_parts(parts, GITHUB_COMMENT_LIMIT)
    summary = text[:text.index("<details>")]
    assert parts[0].startswith(summary)
    assert "| prod/storage-3/s3 |" in parts[0]


def test_split_keeps_resources_once_in_order(tmp_path):
    text, expected = large_report(tmp_path, shards=4, resources_per_shard=200)
    expected_set = set(expected)

    for limit in (GITHUB_COMMENT_LIMIT, 10_000, 3_000):
        parts = split_markdown(text, limit=limit, max_parts=1000)

        check_parts(parts, limit)
        counts = Counter(all_lines(parts))
        assert [line for line in expected if counts[line] != 1] == []
        shown_lines = [line for line in all_lines(parts) if line in expected_set]
        assert shown_lines == expected


def test_cut_fence_reopens_with_language(tmp_path):
    text, _ = large_report(tmp_path, shards=1, resources_per_shard=300)

    parts = split_markdown(text, limit=10_000)

    assert len(parts) >= 3
    for part in parts[1:]:
        lines = part.split("\n")
        assert lines[2:6] == ["<details>", "<summary>prod/storage-0/s3: planned (150 to add, 75 to change, 150 to destroy, 75 to replace) (continued)</summary>", "", "```diff"]


def test_cut_fence_closed_at_end_of_part(tmp_path):
    text, _ = large_report(tmp_path, shards=1, resources_per_shard=300)

    parts = split_markdown(text, limit=10_000)

    for part in parts[:-1]:
        assert part.endswith("\n```\n\n</details>")


def test_sections_that_fit_are_not_cut():
    sections = [f"<details>\n<summary>shard {index}</summary>\n\n```\n" + "line\n" * 60 + "```\n\n</details>\n" for index in range(12)]
    text = "### Summary\n\n" + "\n".join(sections)

    parts = split_markdown(text, limit=1_000)

    check_parts(parts, 1_000)
    assert "(continued)" not in "".join(parts)
    for part in parts:
        assert part.count("<summary>") == part.count("</details>")


def test_plan_text_with_backtick_lines(tmp_path):
    text, expected = large_report(tmp_path, shards=2, resources_per_shard=150, marker="````")
    failing = shard_result(tmp_path, shard_id="prod/broken/s3", status="failed", error="Error: template\n" + "```\n````\nmore output\n" * 200)
    text = render_markdown(report_with(failing)) + text[text.index("<details>"):]
    assert "`````diff" in text

    parts = split_markdown(text, limit=4_000, max_parts=1000)

    check_parts(parts, 4_000)
    assert Counter(all_lines(parts))["more output"] == 200
    expected_set = set(expected)
    assert [line for line in all_lines(parts) if line in expected_set] == expected
    reopened = 0
    for previous, part in zip(parts, parts[1:]):
        closing = previous.split("\n")[-3]
        if re.fullmatch(r"`{3,}", closing):
            # A cut inside a fence reopens the same fence, so ``` and ```` lines stay inside it.
            opener = part.split("\n")[5]
            assert re.match(r"`+", opener).group() == closing
            assert len(closing) == 5
            reopened += 1
    assert reopened >= 3


def test_cap_adds_note_with_counts_and_hint(tmp_path):
    text, expected = large_report(tmp_path, shards=6, resources_per_shard=200)

    parts = split_markdown(text, limit=10_000, max_parts=3, full_report_hint=".orchestrator/runs/latest/report.md")

    assert len(parts) == 3
    check_parts(parts, 10_000)
    note = NOTE.search(parts[-1])
    assert note is not None
    assert parts[-1].endswith(" The full report is at .orchestrator/runs/latest/report.md.")
    assert note.group(3) == "3"

    line_counts = Counter(all_lines(parts))
    missing_sections = [shard for shard in range(6) if f"<summary>prod/storage-{shard}/s3: planned" not in "".join(parts)]
    assert int(note.group(2) or 0) == len(missing_sections)
    missing_resources = [line for line in expected if not line_counts[line]]
    assert missing_resources
    assert int(note.group(1)) >= len(missing_resources)


def test_cap_counts_lines_exactly():
    text = "\n".join(f"line {index:03d}" for index in range(300))

    parts = split_markdown(text, limit=500, max_parts=1)

    assert len(parts) == 1
    assert len(parts[0]) < 500
    shown_lines = [line for line in parts[0].split("\n") if line.startswith("line ")]
    assert shown_lines == [f"line {index:03d}" for index in range(len(shown_lines))]
    assert f"**Report cut short:** {300 - len(shown_lines)} more line(s) did not fit in 1 comment(s)." in parts[0]


def test_cap_note_without_hint():
    parts = split_markdown("x\n" * 400, limit=200, max_parts=2)
    assert parts[-1].endswith("did not fit in 2 comment(s).")


def test_overlong_line_cut_into_pieces():
    long_line = "".join(chr(ord("a") + index % 26) for index in range(2_500))
    text = "### Summary\n\n" + long_line + "\nafter"

    parts = split_markdown(text, limit=1_000)

    check_parts(parts, 1_000)
    pieces = [line for line in all_lines(parts) if line and set(line) <= set("abcdefghijklmnopqrstuvwxyz") and line != "after"]
    assert "".join(pieces) == long_line
    assert Counter(all_lines(parts))["after"] == 1


def test_long_line_inside_fence_keeps_fence():
    long_line = "y" * 2_500
    text = "summary\n\n<details>\n<summary>big</summary>\n\n~~~text\n" + long_line + "\n~~~\n\n</details>\n"

    parts = split_markdown(text, limit=1_000)

    check_parts(parts, 1_000)
    assert "".join(line for line in all_lines(parts) if set(line) == {"y"}) == long_line
    for part in parts[1:]:
        assert "~~~text" in part.split("\n")[:7]


def test_long_summary_repeats_table_header():
    header = ["| shard | status |", "|---|---|"]
    rows = [f"| prod/app-{index:03d}/s3 | planned |" for index in range(200)]
    text = "\n".join(["### Plan", "", *header, *rows, "", "<details>", "<summary>x</summary>", "", "body", "", "</details>"])

    parts = split_markdown(text, limit=2_000)

    check_parts(parts, 2_000)
    for part in parts:
        lines = part.split("\n")
        first_row = next((index for index, line in enumerate(lines) if line.startswith("| prod/")), None)
        if first_row is not None:
            assert lines[first_row - 2:first_row] == header
    assert [line for line in all_lines(parts) if line.startswith("| prod/")] == rows


def test_details_and_summary_stay_together():
    filler = "\n".join("text" for _ in range(8))
    text = "\n".join(["head", "", filler, "<details>", "<summary>kept with its tag</summary>", "", "x" * 40, "", "</details>"])

    for limit in range(100, 160):
        parts = split_markdown(text, limit=limit)
        for part in parts:
            lines = part.split("\n")
            for index, line in enumerate(lines):
                if line == "<details>":
                    assert lines[index + 1].startswith("<summary>"), (limit, part)


def test_nested_details_and_fence_balanced():
    body = "\n".join(f"row {index}" for index in range(200))
    text = "intro\n\n<details>\n<summary>outer</summary>\n\n<details>\n<summary>inner</summary>\n\n````hcl\n```\n" + body + "\n```\n````\n\n</details>\n\n</details>\n"

    parts = split_markdown(text, limit=500)

    check_parts(parts, 500)
    assert [line for line in all_lines(parts) if line.startswith("row ")] == body.split("\n")
    assert "<summary>inner (continued)</summary>" in parts[1]


@pytest.mark.parametrize("max_parts", [0, -1])
def test_max_parts_below_one_raises(max_parts):
    with pytest.raises(ValueError, match="max_parts must be at least 1"):
        split_markdown("x" * 100, limit=50, max_parts=max_parts)


def test_limit_too_small_raises():
    text = "<details>\n<summary>" + "s" * 40 + "</summary>\n\n" + "line\n" * 20 + "</details>\n"
    with pytest.raises(ValueError, match="limit 30 is too small.*use a larger limit"):
        split_markdown(text, limit=30)


def test_part_numbers_widen_past_nine():
    text = "\n".join(f"line {index:04d}" for index in range(2_000))

    parts = split_markdown(text, limit=500, max_parts=100)

    assert len(parts) > 9
    check_parts(parts, 500)
    assert parts[9].startswith(f"_Part 10 of {len(parts)}_")
