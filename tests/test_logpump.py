"""Line splitting and batching of output into log chunks (pure logic)."""

from __future__ import annotations

import asyncio
import itertools

from hypothesis import given
from hypothesis import strategies as st

from consumers.logpump import TRUNCATED, LineSplitter, LogPump
from consumers.masking import Masker


def test_lines_split_across_reads() -> None:
    """A line cut between two reads is joined; the unterminated tail comes out at close."""
    s = LineSplitter(100)
    assert s.feed(b"hel") == []
    assert s.feed(b"lo\nwor") == ["hello"]
    assert s.feed(b"ld\r\n\n") == ["world", ""]
    assert s.feed(b"tail") == []
    assert s.close() == ["tail"]
    assert s.close() == []


def test_utf8_split_across_reads_is_kept_whole() -> None:
    """A multi-byte character split between reads decodes intact; bad bytes are replaced."""
    s = LineSplitter(100)
    data = "héllo ✓\n".encode()
    assert s.feed(data[:2]) + s.feed(data[2:]) == ["héllo ✓"]
    assert s.feed(b"\xff\xfe\n") == ["\ufffd\ufffd"]


def test_over_long_lines_are_truncated_once() -> None:
    """A line over the cap is cut and marked, even when it arrives in many reads."""
    s = LineSplitter(10)
    out = s.feed(b"a" * 25) + s.feed(b"b" * 25) + s.feed(b"c\nnext\n")
    assert out == ["a" * 10 + TRUNCATED, "next"]


@given(
    # text a process can print: any character but lone surrogates (not encodable as UTF-8)
    st.text(
        alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r"),
        max_size=300,
    ),
    st.lists(st.integers(0, 1200), max_size=15),
)
def test_splitting_loses_no_bytes(text: str, cuts: list[int]) -> None:
    """Whatever the read boundaries (even inside a character), the lines are the text's lines."""
    data = text.encode()
    bounds = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    s = LineSplitter(10_000)
    lines = [line for a, b in itertools.pairwise(bounds) for line in s.feed(data[a:b])]
    lines += s.close()
    expected = text.split("\n")
    if expected[-1] == "":
        expected.pop()
    assert lines == expected


def test_pump_flushes_by_count_and_keeps_sequences() -> None:
    """Chunks hold at most max_lines lines and sequence numbers are gapless per stream."""
    sent: list[tuple[str, int, list[str]]] = []

    async def publish(stream: str, first: int, lines: list[str]) -> None:
        sent.append((stream, first, lines))

    async def go() -> None:
        pump = LogPump(publish, flush_s=10, max_lines=3, max_bytes=10_000)  # type: ignore[arg-type]
        await pump.add("stdout", [str(i) for i in range(7)])
        await pump.add("stderr", ["e"])
        await pump.flush_all()
        assert pump.lines_sent("stdout") == 7

    asyncio.run(go())
    stdout = [(first, lines) for stream, first, lines in sent if stream == "stdout"]
    assert stdout == [(0, ["0", "1", "2"]), (3, ["3", "4", "5"]), (6, ["6"])]
    assert ("stderr", 0, ["e"]) in sent


def test_pump_flushes_the_first_line_at_once_then_batches_by_time() -> None:
    """The first line after a quiet period goes out at once (leading edge); a line right after a
    flush waits flush_s, not longer."""
    sent: list[int] = []

    async def publish(stream: str, first: int, lines: list[str]) -> None:
        sent.append(len(lines))

    async def go() -> None:
        pump = LogPump(publish, flush_s=0.05, max_lines=100, max_bytes=10_000)  # type: ignore[arg-type]
        await pump.add("stdout", ["first"])
        await pump.flush_due()
        assert sent == [1]  # no batching delay for the first line
        await pump.add("stdout", ["x", "y"])
        await pump.flush_due()
        assert sent == [1]  # within flush_s of the last flush: batched
        deadline = pump.next_deadline()
        assert deadline is not None and deadline <= 0.05
        await asyncio.sleep(0.06)
        await pump.flush_due()
        assert sent == [1, 2]
        assert pump.next_deadline() is None

    asyncio.run(go())


@given(
    secret=st.text(alphabet="XYZ0123456789", min_size=3, max_size=40),
    at=st.integers(0, 60),
    cuts=st.lists(st.integers(0, 200), max_size=8),
    limit=st.integers(8, 64),
)
def test_a_secret_is_masked_before_a_line_is_cut(
    secret: str, at: int, cuts: list[int], limit: int
) -> None:
    """Wherever a secret sits — across the line limit, across reads — no character of it
    reaches a line (the padding and the marker share none with it): masked first, then cut."""
    data = ("a" * at + secret + "b" * 30 + "\n").encode()
    s = LineSplitter(limit, Masker([secret]))
    out: list[str] = []
    start = 0
    for cut in sorted(c for c in cuts if c < len(data)):
        out += s.feed(data[start:cut])
        start = cut
    out += s.feed(data[start:]) + s.close()
    text = "\n".join(out)
    assert not set(text) & set("XYZ0123456789"), text


def test_overlapping_and_repeated_secrets_are_masked_whole() -> None:
    """Every byte of every occurrence is masked: overlapping secrets, a secret overlapping
    itself, and separators other than a newline (a log line keeps them)."""
    assert Masker(["abcXYZ", "XYZdef"]).mask_bytes(b"-abcXYZdef-") == b"-********-"
    assert Masker(["abcabc"]).mask_bytes(b"abcabcabc") == b"********"
    assert Masker(["ab\x1ccd\x1cef"]).mask_bytes(b"ab\x1ccd\x1cef") == b"********"


@given(
    secrets=st.lists(st.text(alphabet="XYZ", min_size=3, max_size=8), min_size=1, max_size=3),
    text=st.text(alphabet="XYZab", max_size=60),
)
def test_no_occurrence_of_any_secret_survives_masking(secrets: list[str], text: str) -> None:
    masked = Masker(secrets).mask_bytes(text.encode()).decode()
    assert not any(secret in masked for secret in secrets)
