"""How much work is waiting: jobs per runner lane and the backlogs of durable consumers (read
by `cronium status` and the metrics exporter)."""

from __future__ import annotations

import contextlib
from typing import Final, get_args

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import ConsumerInfo

from cronium_bus.events import PRIORITIES, RunnerKind
from cronium_bus.subjects import JOBS_STREAM, job_subject

_CONSUMER_PAGE: Final = 256  # JetStream's page size for consumer lists
_CONSUMER_PAGES: Final = 8


async def lane_jobs(js: JetStreamContext) -> dict[tuple[str, str], int]:
    """Jobs in each runner lane (runner, priority), every lane listed (0 when empty)."""
    subjects: dict[str, int] = {}
    with contextlib.suppress(nats.js.errors.NotFoundError):
        lanes = await js.stream_info(JOBS_STREAM, subjects_filter="cronium.jobs.>")
        subjects = lanes.state.subjects or {}
    return {
        (runner, priority): subjects.get(job_subject(runner, priority), 0)
        for runner in get_args(RunnerKind)
        for priority in PRIORITIES
    }


async def durables(js: JetStreamContext, stream: str) -> list[ConsumerInfo]:
    """The stream's durable consumers (ephemeral ones, one per live follower, are skipped),
    paging through the server's list (at most ``_CONSUMER_PAGES`` pages of 256)."""
    found: list[ConsumerInfo] = []
    offset = 0
    for _ in range(_CONSUMER_PAGES):
        page = await js.consumers_info(stream, offset=offset)
        found += [c for c in page if c.config.durable_name]
        if len(page) < _CONSUMER_PAGE:
            break
        offset += len(page)
    return found
