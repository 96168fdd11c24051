"""Durable consumers that someone deleted: noticed, reported, recreated.

Every service consumer owns durable consumers on the streams (the dispatcher's requests, the
projector's two, the runners' lanes). People have no JetStream API, but an admin, an operator's
`nats` CLI or a migration can still delete one; a service that kept fetching from a missing
consumer would sit idle while its heartbeat said healthy. So each checks its own once per
heartbeat interval, reports ``durable consumer missing`` in its heartbeat until the next check
finds it back, and recreates it.
"""

from __future__ import annotations

import time
from typing import Final

import nats.errors
import nats.js.errors
import structlog
from nats.js import JetStreamContext

from cronium_bus.health import Heartbeat

log = structlog.get_logger(__name__)
MISSING: Final = "durable consumer missing"


async def missing(js: JetStreamContext, stream: str, name: str) -> bool:
    """Whether the durable consumer ``name`` of ``stream`` is gone (``False`` when it cannot
    be told: the server is away, which the connection reports on its own)."""
    try:
        await js.consumer_info(stream, name)
    except nats.js.errors.NotFoundError:
        return True
    except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as exc:
        log.debug("cannot check a durable consumer", stream=stream, name=name, error=str(exc))
    return False


def report(hb: Heartbeat, gone: list[str]) -> None:
    """Say in the heartbeat which durables were found missing (``ok`` again once none has been
    for three heartbeat intervals, so at least one beat carries the news)."""
    now = time.time()
    if gone:
        log.warning("durable consumers were deleted; recreating them", consumers=gone)
        hb.status = MISSING
        hb.detail["missing"] = ",".join(gone)
        hb.detail["missing_at"] = f"{now:.3f}"
    elif hb.status == MISSING and now - float(hb.detail.get("missing_at", 0)) >= 3 * hb.interval:
        hb.status = "ok"
        hb.detail.pop("missing", None)
        hb.detail.pop("missing_at", None)
