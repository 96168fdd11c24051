"""Script helpers with Cronium's names, in python, node and bash, against the real runner."""

from __future__ import annotations

import pytest

from cronium_bus.bus import Bus
from cronium_bus.events import HelperCalled, OutputSet, VariableSet
from cronium_bus.history import execution_events
from tests.conftest import Embedded
from tests.helpers import requested, run_code, wait_final
from tests.test_container_runner import lines_of

pytestmark = pytest.mark.docker

SCRIPTS = {
    "python": """
data = cronium.input()
cronium.setVariable("greeting", "hello " + data["name"])
cronium.set_condition(data["n"] > 2)
cronium.output({"doubled": data["n"] * 2, "user": cronium.event()["user"]})
print("done")
""",
    "node": """
(async () => {
  const data = cronium.input();
  await cronium.setVariable('greeting', 'hello ' + data.name);
  await cronium.setCondition(data.n > 2);
  await cronium.output({ doubled: data.n * 2, user: cronium.event().user });
  console.log('done');
})().catch((e) => { console.error(e.message); process.exit(1); });
""",
    "bash": """
name=$(cronium_input | jq -r .name)
n=$(cronium_input | jq .n)
cronium_setVariable greeting "hello $name"
cronium_set_condition "$([ "$n" -gt 2 ] && echo true || echo false)"
cronium_output "{\\"doubled\\": $((n * 2)), \\"user\\": $(cronium_event | jq .user)}"
echo done
""",
}
READERS = {
    "python": 'print(cronium.get_variable("greeting"))',
    "node": "cronium.getVariable('greeting').then((v) => console.log(v));",
    "bash": "cronium_get_variable greeting",
}


@pytest.mark.parametrize("runtime", ["python", "node", "bash"])
async def test_helpers_round_trip(bus: Bus, runner: Embedded, runtime: str) -> None:
    """A script reads input, sets a variable and a condition, writes output; a second execution
    of the same user reads the variable."""
    state = await run_code(
        bus, SCRIPTS[runtime], runtime, input={"name": runtime, "n": 3}, user=f"user-{runtime}"
    )
    assert state.status == "succeeded", await lines_of(bus, state.execution_id)
    assert state.output == {"doubled": 6, "user": f"user-{runtime}"}
    assert state.condition is True
    events = await execution_events(bus.js, state.execution_id, max_bytes=1 << 20)
    audited = [e.helper for e in events if isinstance(e, HelperCalled)]
    assert {"input", "variables", "condition", "output", "event"} <= set(audited)
    assert any(isinstance(e, VariableSet) and e.key == "greeting" for e in events)
    assert sum(isinstance(e, OutputSet) for e in events) == 1

    second = await run_code(bus, READERS[runtime], runtime, user=f"user-{runtime}")
    assert (await lines_of(bus, second.execution_id))["stdout"] == [f"hello {runtime}"]
    other_user = await run_code(bus, READERS[runtime], runtime, user="someone-else")
    assert (await lines_of(bus, other_user.execution_id))["stdout"] in (["None"], ["null"], [])


async def test_bad_helper_calls_get_clear_errors(bus: Bus, runner: Embedded) -> None:
    """Oversized, non-JSON, badly named and unauthorised calls are refused and audited."""
    code = """
import json, socket, http.client
def call(method, path, body, token=None):
    c = http.client.HTTPConnection("x")
    s = socket.socket(socket.AF_UNIX); s.connect("/cronium/api.sock"); c.sock = s
    tok = token or open("/cronium/token").read()
    c.request(method, path, body=body, headers={"Authorization": "Bearer " + tok})
    r = c.getresponse(); return r.status, json.loads(r.read())["error"]
print(call("POST", "/v1/output", b"not json"))
print(call("PUT", "/v1/variables/big", b'{"value": "' + b"x" * 300000 + b'"}'))
print(call("PUT", "/v1/variables/bad..name%2F..", b'{"value": 1}'))
print(call("GET", "/v1/input", None, token="forged"))
print(call("POST", "/v1/condition", b'{"value": "yes"}'))
print(call("GET", "/v1/secrets/OTHER", None))
try:
    cronium.setCondition("yes")
except Exception as e:
    print("sdk:", e)
"""
    state = await run_code(bus, code)
    out = (await lines_of(bus, state.execution_id))["stdout"]
    assert out[0].startswith("(400, 'the body is not JSON")
    assert out[1].startswith("(413, 'the body is 300,")
    assert out[2].startswith("(400,") or out[2].startswith("(404,")
    assert out[3] == "(401, 'missing or wrong token')"
    assert out[4] == "(400, 'the condition must be true or false')"
    assert out[5].startswith("(403, 'secret OTHER was not requested")
    assert out[6] == "sdk: setCondition takes True or False"
    events = await execution_events(bus.js, state.execution_id, max_bytes=1 << 20)
    refused = [e for e in events if isinstance(e, HelperCalled) and not e.ok]
    assert len(refused) >= 5


async def test_a_flood_of_connections_and_malformed_calls_hurt_nobody(
    bus: Bus, runner: Embedded
) -> None:
    """A script opens 300 idle connections to its runtime API: beyond 16 they are answered 503
    and closed, and another execution running meanwhile is untouched. Keys such as `a.` or
    `a..b` and a body nesting 100 levels are refused with a 4xx and a reason, and audited;
    once the flood is gone, the API answers again."""
    code = """
import json, socket, http.client, time
def call(method, path, body=None):
    c = http.client.HTTPConnection("x")
    s = socket.socket(socket.AF_UNIX); s.connect("/cronium/api.sock"); c.sock = s
    c.request(method, path, body=body,
              headers={"Authorization": "Bearer " + open("/cronium/token").read()})
    r = c.getresponse(); return r.status, json.loads(r.read()).get("error")
socks = []
for _ in range(300):
    s = socket.socket(socket.AF_UNIX); s.connect("/cronium/api.sock"); socks.append(s)
time.sleep(2)  # every connection accepted by now: refused ones were answered at once
busy = 0
for s in socks:
    s.settimeout(0.01)
    try:
        busy += b" 503 " in s.recv(200)
    except OSError:
        pass
print("busy", busy)
for s in socks:
    s.close()
time.sleep(0.5)
print(call("GET", "/v1/variables/a."))
print(call("GET", "/v1/variables/a..b"))
print(call("PUT", "/v1/variables/ok", b'{"value": ' + b"[" * 100 + b"]" * 100 + b"}"))
print(call("PUT", "/v1/variables/ok", b'{"value": 1}'))
"""
    flood = requested(code)
    other = requested("import time; time.sleep(1); print('other fine')")
    await bus.publish(flood)
    await bus.publish(other)
    state = await wait_final(bus, flood.execution_id, timeout=90)
    assert state.status == "succeeded", state.error
    out = (await lines_of(bus, state.execution_id))["stdout"]
    assert out[0] == "busy 284", out  # 300 - 16 held
    assert out[1].startswith("(400, \"'a.' is not a valid name")
    assert out[2].startswith("(400, \"'a..b' is not a valid name")
    assert out[3].startswith("(400, 'the body JSON nests deeper than 65 levels")
    assert out[4] == "(200, None)"
    second = await wait_final(bus, other.execution_id, timeout=60)
    assert second.status == "succeeded"
    assert (await lines_of(bus, other.execution_id))["stdout"] == ["other fine"]
    events = await execution_events(bus.js, state.execution_id, max_bytes=1 << 20)
    refused = [e for e in events if isinstance(e, HelperCalled) and not e.ok]
    assert len(refused) >= 3
