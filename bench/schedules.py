"""What a fire costs the scheduler as a schedule grows old: reading the schedule's state.

A schedule with N past fires (each ``schedule.fired`` and ``schedule.run_ended``) is written to
a real ``cronium up``'s CRONIUM_EXEC. Timed, in the same run: the scheduler's read now (the
snapshot in ``cronium_schedules`` plus the events after it: one fire's two events) against the
baseline, the whole fold of every event the schedule ever had (what the scheduler did before
snapshots; the stream would also have aged its first events out after 30 days). Printed: the
median of several reads and the ratio.

Run: .venv/bin/python -m bench.schedules [--fires N,N,...]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from datetime import timedelta

from bench.common import median, stack, table
from consumers.scheduler.snapshots import ScheduleStore
from cronium_bus.bus import Bus
from cronium_bus.events import (
    Request,
    ScheduleCreated,
    ScheduleFired,
    ScheduleRunEnded,
    ScheduleSpec,
    utcnow,
)
from cronium_bus.history import execution_events
from cronium_bus.ids import new_id
from cronium_bus.schedules.spec import schedule_id
from cronium_bus.schedules.state import fold_schedule
from cronium_bus.settings import load_settings

OWNER = "bench"
READS = 5


def _env(sid: str) -> dict[str, object]:
    return {
        "event_id": new_id("ev"),
        "time": utcnow(),
        "execution_id": sid,
        "correlation_id": sid,
        "producer": "bench",
        "user": OWNER,
    }


async def _fire(bus: Bus, sid: str, i: int) -> None:
    at = utcnow().replace(microsecond=0) - timedelta(days=1) + timedelta(seconds=i)
    run = f"{sid}-{i}"
    await bus.publish(ScheduleFired(**_env(sid), fire_at=at, run_id=run))  # type: ignore[arg-type]
    await bus.publish(ScheduleRunEnded(**_env(sid), run_id=run, status="succeeded"))  # type: ignore[arg-type]


async def _one(bus: Bus, fires: int) -> list[object]:
    name = f"s{fires}"
    sid = schedule_id(OWNER, name)
    spec = ScheduleSpec(name=name, request=Request(runtime="bash", code="true"), every_s=1)
    await bus.publish(ScheduleCreated(**_env(sid), spec=spec))  # type: ignore[arg-type]
    for first in range(0, fires, 200):
        await asyncio.gather(*(_fire(bus, sid, i) for i in range(first, min(fires, first + 200))))
    store = ScheduleStore(bus.js, max_bytes=bus.settings.streams.max_msg_size)
    await store.state(OWNER, sid)  # the snapshot, as the scheduler keeps it
    snapshot_ms, whole_ms = [], []
    for i in range(READS):
        await _fire(bus, sid, fires + i)  # one more fire came since the last read
        t = time.perf_counter()
        state = await store.state(OWNER, sid)
        snapshot_ms.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        events = await execution_events(bus.js, sid, max_bytes=1 << 24, owner=OWNER)
        whole = fold_schedule(events)
        whole_ms.append((time.perf_counter() - t) * 1000)
        assert state is not None
        assert whole is not None
        assert state.runs == whole.runs  # the same state
    s, w = median(snapshot_ms), median(whole_ms)
    return [f"{fires:,}", f"{2 * fires + 1:,}", s, w, f"{w / s:.0f}x"]


async def _run(url: str, creds: str, sizes: list[int]) -> str:
    settings = load_settings(nats_url=url, creds=creds)
    rows = []
    async with Bus(settings, name="bench-schedules") as bus:
        for fires in sizes:
            rows.append(await _one(bus, fires))
    return table(
        f"reading a schedule's state on a fire (median of {READS}, ms)",
        ["past fires", "events", "snapshot + new events", "whole fold (before)", "ratio"],
        rows,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.schedules", description=__doc__)
    parser.add_argument("--fires", default="100,1000,10000", help="past fires (comma-separated)")
    args = parser.parse_args(argv)
    sizes = [int(x) for x in args.fires.split(",")]
    with stack(consumers="dispatcher") as st:
        creds = str(st.data_dir / "auth" / "service.creds")
        saved = os.environ.pop("CRONIUM_CREDS", None)
        try:
            print(asyncio.run(_run(st.url, creds, sizes)), flush=True)
        finally:
            if saved is not None:
                os.environ["CRONIUM_CREDS"] = saved


if __name__ == "__main__":
    main()
