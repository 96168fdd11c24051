"""Is every stored event in the audit? The hash chain proves no row was changed or removed;
this proves no event was left out: every stream sequence the projector has acknowledged has an
audit row, or is not an authentic event (junk, refused upstream), or was dead-lettered by the
projector with its reason. Gaps are found by ClickHouse; only the gaps are read from the stream.
"""

from __future__ import annotations

from typing import Any, Final

import nats.js.errors
from nats.js import JetStreamContext

from cronium_bus.authentic import decode_on
from cronium_bus.errors import EventDecodeError
from cronium_bus.subjects import DLQ_STREAM, EXEC_STREAM, dlq_subject

MAX_CHECKED: Final = 10_000
"""Gap sequences read from the stream at most per verification (a bound, said when reached)."""
DURABLE: Final = "projector-exec"


async def dead_lettered(js: JetStreamContext, limit: int = MAX_CHECKED) -> tuple[set[int], bool]:
    """Stream sequences of exec events the projector dead-lettered, and whether all were read
    (at most ``limit``)."""
    seqs: set[int] = set()
    seq = 1
    for _ in range(limit):
        try:
            msg = await js.get_msg(DLQ_STREAM, seq=seq, subject=dlq_subject(DURABLE), next=True)
        except nats.js.errors.NotFoundError:
            return seqs, True
        headers = msg.headers or {}
        if headers.get("Cronium-Stream") == EXEC_STREAM:
            seqs.add(int(headers.get("Cronium-Stream-Seq", "0")))
        seq = (msg.seq or seq) + 1
    return seqs, False


async def unaudited(
    js: JetStreamContext, gaps_of: Any, *, max_bytes: int
) -> tuple[list[tuple[int, str]], bool]:
    """Authentic events with no audit row (``(seq, execution id)``), and whether every gap
    was checked. ``gaps_of(lo, hi)`` returns the audit's gaps in that range."""
    info = await js.stream_info(EXEC_STREAM)
    try:
        floor = (await js.consumer_info(EXEC_STREAM, DURABLE)).ack_floor
    except nats.js.errors.NotFoundError:
        return [], True  # nothing projected yet
    hi = floor.stream_seq if floor is not None else 0
    gaps: list[tuple[int, int]] = await gaps_of(info.state.first_seq, hi)
    dead, all_read = await dead_lettered(js) if gaps else (set(), True)
    missing: list[tuple[int, str]] = []
    checked = 0
    for first, last in gaps:
        for seq in range(first, last + 1):
            if checked >= MAX_CHECKED:
                return missing, False
            checked += 1
            if seq in dead:
                continue
            try:
                msg = await js.get_msg(EXEC_STREAM, seq=seq)
            except nats.js.errors.NotFoundError:
                continue  # deleted or aged out
            try:
                event = decode_on(msg.subject or "", msg.data or b"", max_bytes=max_bytes)
            except EventDecodeError:
                continue  # not an authentic event: never audited, by design
            missing.append((seq, event.execution_id))
    return missing, all_read
