"""Dispatcher validation: every rejection says what was asked, what is allowed, what to do."""

from __future__ import annotations

import msgspec
import pytest

from consumers.dispatcher.validate import validate_request
from cronium_bus.events import ErrorInfo, Limits, Request
from cronium_bus.settings import load_settings

SETTINGS = load_settings(nats_url="nats://127.0.0.1:1")


def test_defaults_are_filled_in() -> None:
    """An accepted request carries the limits it will run with."""
    result = validate_request(Request(runtime="python", code="print(1)"), SETTINGS)
    assert isinstance(result, Request)
    assert result.limits == Limits(cpus=0.5, memory_bytes=512 * 1024**2, pids=100)
    assert result.timeout_s == 3600


@pytest.mark.parametrize(
    ("changes", "message", "hint"),
    [
        ({"limits": Limits(memory_bytes=999 * 1024**3)}, "999 GiB of memory asked", "--memory"),
        ({"limits": Limits(cpus=64)}, "64 CPUs asked", "--cpus 2"),
        ({"limits": Limits(pids=100000)}, "100000 processes", "--pids 1000"),
        ({"limits": Limits(memory_bytes=1024)}, "too little", "6m"),
        ({"timeout_s": 10 * 86400}, "outside", "between"),
        ({"timeout_s": 0.01}, "outside", "between"),
        ({"code": "   \n"}, "empty", "something to run"),
        ({"code": "x" * (300 * 1024)}, "over the limit", "max_code"),
        ({"code": "print(1)\x00"}, "NUL", "text"),
        ({"input": "y" * (300 * 1024)}, "input is", "max_input"),
        ({"network": True}, "network", "allow_network"),
        ({"targets": ("web1",)}, "targets", "ssh"),
        ({"runner": "ssh"}, "at least one target", "server"),
    ],
)
def test_rejections(changes: dict[str, object], message: str, hint: str) -> None:
    """Each bad request is rejected with an actionable reason."""
    request = msgspec.structs.replace(Request(runtime="python", code="print(1)"), **changes)
    result = validate_request(request, SETTINGS)
    assert isinstance(result, ErrorInfo)
    assert result.kind == "validation"
    assert message in result.message
    assert hint in result.hint
