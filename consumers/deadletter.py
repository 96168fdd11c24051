"""Parking messages a consumer cannot process, with the reason, on ``cronium.dlq.<source>``."""

from __future__ import annotations

import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from cronium_bus.subjects import dlq_subject

log = structlog.get_logger(__name__)
_MAX_REASON = 1000


async def dead_letter(js: JetStreamContext, source: str, msg: Msg, reason: str) -> None:
    """Copy ``msg`` to the dead-letter stream with why, then terminate it on its consumer."""
    meta = msg.metadata
    seq = meta.sequence.stream
    await js.publish(
        dlq_subject(source),
        msg.data,
        headers={
            "Nats-Msg-Id": f"{source}:{meta.stream}:{seq}",
            "Cronium-Reason": reason.replace("\r", " ").replace("\n", " ")[:_MAX_REASON],
            "Cronium-Subject": msg.subject,
            "Cronium-Stream": meta.stream,
            "Cronium-Stream-Seq": str(seq),
            "Cronium-Deliveries": str(meta.num_delivered),
        },
    )
    await msg.term()
    log.error("message dead-lettered", source=source, subject=msg.subject, reason=reason)
