"""Priority lanes: which lane a runner takes its next job from, and taking it.

Policy (stated in the README): lanes are scanned critical → high → normal → low, so a runner always
prefers higher lanes; but every ``FAIR_EVERY``-th claim starts the scan one lane lower, rotating
over high, normal and low, so a steady stream of higher work cannot starve lower work forever —
each lower lane with work waiting gets at least one claim in ``3 × FAIR_EVERY``.
"""

from __future__ import annotations

import json
from typing import Final

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from cronium_bus.events import PRIORITIES, Priority, RunnerKind
from cronium_bus.subjects import JOBS_STREAM, job_subject

FAIR_EVERY: Final = 8
_NO_WAIT: Final = json.dumps({"batch": 1, "no_wait": True}).encode()


def lane_order(claim_number: int) -> tuple[Priority, ...]:
    """The order in which lanes are scanned for the ``claim_number``-th claim (0-based)."""
    if claim_number % FAIR_EVERY != FAIR_EVERY - 1:
        return PRIORITIES
    start = 1 + (claim_number // FAIR_EVERY) % (len(PRIORITIES) - 1)
    return PRIORITIES[start:] + PRIORITIES[:start]


def durable_name(runner: RunnerKind, priority: Priority) -> str:
    """The durable consumer of one lane, shared by every runner of that kind."""
    return f"{runner}-{priority}"


async def ensure_lane_consumers(
    js: JetStreamContext, runner: RunnerKind, *, ack_wait: float
) -> None:
    """Create or update the durable consumer of each lane of ``runner``.

    Deliveries are unlimited: a job goes back to its lane while it waits (``not_before``, a
    concurrency limit, a runner still holding it); the runner bounds real failures itself and
    dead-letters a job that keeps failing."""
    for priority in PRIORITIES:
        name = durable_name(runner, priority)
        await js.add_consumer(
            JOBS_STREAM,
            ConsumerConfig(
                durable_name=name,
                filter_subject=job_subject(runner, priority),
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=ack_wait,
                max_deliver=-1,
                max_ack_pending=10_000,
            ),
        )


class LaneClaimer:
    """Takes the next job of a lane without waiting (a ``no_wait`` pull request).

    JetStream delivers a pulled message with its original subject, so it cannot be matched by the
    client's request/reply mux; each lane has its own reply inbox instead.
    """

    def __init__(self, nc: Client, runner: RunnerKind) -> None:
        self.nc = nc
        self.runner = runner
        self._subs: dict[Priority, Subscription] = {}

    async def try_claim(self, priority: Priority, timeout: float = 2.0) -> Msg | None:
        """The next message of the lane, or ``None`` when it is empty."""
        sub = self._subs.get(priority)
        if sub is None:
            sub = await self.nc.subscribe(self.nc.new_inbox())
            self._subs[priority] = sub
        api = f"$JS.API.CONSUMER.MSG.NEXT.{JOBS_STREAM}.{durable_name(self.runner, priority)}"
        await self.nc.publish(api, _NO_WAIT, reply=sub.subject)
        try:
            msg = await sub.next_msg(timeout=timeout)
        except nats.errors.TimeoutError:
            return None
        if (msg.headers or {}).get("Status") is not None or not msg.reply:
            return None  # 404 no messages, 408 request timeout, or another status
        return msg

    async def close(self) -> None:
        """Drop the inboxes."""
        subs, self._subs = self._subs, {}
        for sub in subs.values():
            await sub.unsubscribe()
