"""Readers believe an event only on its own subject (DESIGN invariant 7)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cronium_bus.authentic import decode_on, mismatch
from cronium_bus.bus import Bus
from cronium_bus.codec import encode
from cronium_bus.errors import EventDecodeError
from cronium_bus.events import (
    LogChunk,
    Queued,
    Requested,
    Succeeded,
    follow_up,
    make_terminal,
    short_type,
)
from cronium_bus.history import execution_state
from cronium_bus.subjects import exec_subject, job_subject, log_subject
from tests.conftest import Embedded
from tests.helpers import requested, run_code

REQ = requested("print(1)")


def _succeeded(cause: Requested) -> Succeeded:
    return make_terminal(Succeeded, follow_up(cause, "forger", attempt=1), runner="r", exit_code=0)


def _chunk(cause: Requested) -> LogChunk:
    return LogChunk(**follow_up(cause, "r", attempt=1), stream="stdout", first_seq=0, lines=("x",))


def test_an_event_on_its_own_subject_is_accepted() -> None:
    """Each kind of subject accepts the event it is for."""
    done = _succeeded(REQ)
    assert mismatch(exec_subject(REQ.user, REQ.execution_id, REQ.type), REQ) is None
    assert mismatch(exec_subject(REQ.user, REQ.execution_id, done.type), done) is None
    assert mismatch(log_subject(REQ.user, REQ.execution_id), _chunk(REQ)) is None
    lane = job_subject("container", "normal")
    queued = Queued(**follow_up(REQ, "d", attempt=1), request=REQ.request, lane=lane)
    assert mismatch(lane, queued) is None
    assert decode_on(exec_subject(REQ.user, REQ.execution_id, done.type), encode(done)) == done


def test_a_terminal_on_the_request_subject_is_refused() -> None:
    """A forged `succeeded` where a producer may publish (…requested) is not believed."""
    forged = _succeeded(REQ)
    with pytest.raises(EventDecodeError, match=r"not authentic: a execution\.succeeded event"):
        decode_on(exec_subject(REQ.user, REQ.execution_id, "execution.requested"), encode(forged))


def test_an_event_naming_another_owner_is_refused() -> None:
    """A body whose user is not the subject's owner (which nats-server checked) is refused."""
    done = _succeeded(REQ)
    reason = mismatch(exec_subject("mallory", REQ.execution_id, done.type), done)
    assert reason is not None and "owned by 'mallory'" in reason
    assert mismatch(log_subject("mallory", REQ.execution_id), _chunk(REQ)) is not None


def test_an_event_of_one_execution_on_anothers_subject_is_refused() -> None:
    """Execution B's subject does not carry A's events, lifecycle or logs."""
    other = requested("print(2)")
    done = _succeeded(REQ)
    assert "execution" in (
        mismatch(exec_subject(other.user, other.execution_id, done.type), done) or ""
    )
    assert mismatch(log_subject(other.user, other.execution_id), _chunk(REQ)) is not None
    assert mismatch(log_subject(REQ.user, REQ.execution_id), done) is not None
    lane = job_subject("container", "high")
    queued = Queued(**follow_up(REQ, "d", attempt=1), request=REQ.request, lane="elsewhere")
    assert mismatch(lane, queued) is not None
    assert mismatch(lane, done) is not None


_TOKEN = st.one_of(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=12),
    st.sampled_from(
        [REQ.execution_id, REQ.user, "mallory", "requested", "succeeded", "chunk", "cronium"]
    ),
)


@given(
    subject=st.one_of(
        st.lists(_TOKEN, min_size=1, max_size=6).map(".".join),
        st.tuples(st.sampled_from(["exec", "logs", "jobs"]), st.lists(_TOKEN, max_size=4)).map(
            lambda t: ".".join(["cronium", t[0], *t[1]])
        ),
    )
)
def test_any_subject_either_fits_or_names_the_mismatch(subject: str) -> None:
    """For any subject, an event is accepted only when subject id and type agree with the body."""
    for event in (REQ, _succeeded(REQ), _chunk(REQ)):
        reason = mismatch(subject, event)
        tokens = subject.split(".")
        is_chunk = isinstance(event, LogChunk)
        fits = (
            tokens[:2] == ["cronium", "exec"]
            and tokens[2:] == [event.user, event.execution_id, short_type(event.type)]
            and not is_chunk
        ) or (
            tokens[:2] == ["cronium", "logs"]
            and tokens[2:] == [event.user, event.execution_id]
            and is_chunk
        )
        if tokens[0] != "cronium" or len(tokens) < 2 or tokens[1] not in {"exec", "logs", "jobs"}:
            assert reason is None  # not a subject with a grammar of ours
        elif fits:
            assert reason is None
        else:
            assert reason, f"{event.type} on {subject} accepted"


@pytest.mark.docker
async def test_forged_events_change_nothing_show_says(bus: Bus, runner: Embedded) -> None:
    """A succeeded forged on the request subject, and another execution's event published on
    this one's subject, leave this execution's folded state as the runner made it."""
    victim = await run_code(bus, "import sys; sys.exit(3)")
    assert (victim.status, victim.exit_code) == ("failed", 3)
    other = requested("print(2)")
    victim_request = requested("x", user=victim.user or "tester")
    forged = make_terminal(
        Succeeded,
        {**follow_up(victim_request, "forger", attempt=1), "execution_id": victim.execution_id},
        runner="forger",
        exit_code=0,
    )
    await bus.js.publish(
        exec_subject("tester", victim.execution_id, "execution.requested"), encode(forged)
    )
    stranger = make_terminal(Succeeded, follow_up(other, "forger", attempt=1), runner="f")
    await bus.js.publish(
        exec_subject("tester", victim.execution_id, stranger.type), encode(stranger)
    )
    after = await execution_state(bus.js, victim.execution_id, max_bytes=1 << 24)
    assert after is not None
    assert (after.status, after.exit_code) == ("failed", 3)
    assert await execution_state(bus.js, other.execution_id, max_bytes=1 << 24) is None
