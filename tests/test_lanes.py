"""The lane policy: higher lanes first, lower lanes never starved."""

from __future__ import annotations

from consumers.lanes import FAIR_EVERY, lane_order


def test_higher_lanes_first_most_of_the_time() -> None:
    """All but one claim in FAIR_EVERY scan critical → high → normal → low."""
    orders = [lane_order(n) for n in range(FAIR_EVERY * 3)]
    strict = [o for o in orders if o == ("critical", "high", "normal", "low")]
    assert len(strict) == (FAIR_EVERY - 1) * 3


def test_every_lower_lane_gets_a_turn() -> None:
    """Within 3 × FAIR_EVERY claims, each lower lane is scanned first at least once."""
    firsts = {lane_order(n)[0] for n in range(FAIR_EVERY * 3)}
    assert firsts == {"critical", "high", "normal", "low"}


def test_every_order_covers_all_lanes() -> None:
    """No scan order skips a lane."""
    for n in range(100):
        assert sorted(lane_order(n)) == ["critical", "high", "low", "normal"]
