"""Ids derived from other ids (SSH fan-out children) never collide for distinct parents."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from consumers.ssh.service import child_id
from cronium_bus.ids import is_valid_id

_IDS = st.text(alphabet="ab-_9", min_size=1, max_size=64)


@given(st.lists(_IDS, min_size=2, max_size=20, unique=True), st.integers(0, 199))
def test_child_ids_are_valid_and_distinct_for_distinct_parents(
    parents: list[str], targets: int
) -> None:
    """Parents that share a 56-character prefix (the old cut) still get distinct children."""
    children = [child_id(p, i) for p in parents for i in (0, targets)]
    assert all(is_valid_id(c) for c in children)
    assert len(set(children)) == len({(p, i) for p in parents for i in (0, targets)})


def test_two_long_parents_with_one_prefix() -> None:
    """The case seen: two 64-character ids sharing their first 56 characters."""
    a, b = "x" * 56 + "aaaaaaaa", "x" * 56 + "bbbbbbbb"
    assert child_id(a, 0) != child_id(b, 0)
    assert child_id("short", 3) == "short-3"  # readable when it fits
