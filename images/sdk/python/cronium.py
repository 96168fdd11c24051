"""Cronium's script helpers for python, talking to the runtime API over /cronium/api.sock.

Names as in Cronium: cronium.input(), output(data), getVariable(k), setVariable(k, v),
setCondition(bool), event(), and snake_case aliases; plus secret(name). Scripts may use them
without importing anything (the launcher puts ``cronium`` in builtins), with
``from cronium import cronium``, or after ``import cronium`` (the module offers the same calls).

Importing this module is cheap (it runs before every script): http.client, json and socket are
imported on the first helper call only.
"""

import os

__all__ = [
    "CroniumError",
    "cronium",
    "event",
    "getVariable",
    "get_secret",
    "get_variable",
    "input",
    "output",
    "secret",
    "setCondition",
    "setVariable",
    "set_condition",
    "set_variable",
]

_SOCKET = os.environ.get("CRONIUM_API_SOCKET", "/cronium/api.sock")
_TOKEN_FILE = os.environ.get("CRONIUM_API_TOKEN_FILE", "/cronium/token")


class CroniumError(Exception):
    """A helper call was refused; the message says why and what to do."""


def _connection(path):
    """An HTTP connection over the runtime API's Unix socket."""
    import http.client
    import socket

    class _UnixConnection(http.client.HTTPConnection):
        def connect(self):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(30)
            sock.connect(path)
            self.sock = sock

    return _UnixConnection("cronium", timeout=30)


class _Cronium:
    def __init__(self):
        self._token = None

    def _call(self, method, path, body=None):
        import json

        if self._token is None:
            with open(_TOKEN_FILE) as f:
                self._token = f.read().strip()
        conn = _connection(_SOCKET)
        headers = {"Authorization": "Bearer " + self._token}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            payload = json.loads(resp.read() or b"{}")
        finally:
            conn.close()
        if resp.status >= 400:
            msg = payload.get("error", "helper call failed (HTTP %d)" % resp.status)
            if payload.get("hint"):
                msg += " (hint: %s)" % payload["hint"]
            raise CroniumError(msg)
        return payload.get("value")

    def input(self):
        """The execution's input (any JSON value, or None)."""
        return self._call("GET", "/v1/input")

    def output(self, data):
        """Set the execution's output (any JSON value); the next workflow step receives it."""
        self._call("POST", "/v1/output", {"value": data})

    def getVariable(self, key):  # noqa: N802 - Cronium's name
        """A variable of this user (None when unset)."""
        return self._call("GET", "/v1/variables/" + key)

    def setVariable(self, key, value):  # noqa: N802 - Cronium's name
        """Store a variable for this user; later executions read it."""
        self._call("PUT", "/v1/variables/" + key, {"value": value})

    def setCondition(self, condition):  # noqa: N802 - Cronium's name
        """Set the condition used by conditional actions (on condition)."""
        if not isinstance(condition, bool):
            raise CroniumError("setCondition takes True or False")
        self._call("POST", "/v1/condition", {"value": condition})

    def event(self):
        """Metadata of the running execution (id, attempt, user, runtime, ...)."""
        return self._call("GET", "/v1/event")

    def secret(self, name):
        """A secret this execution asked for, by name."""
        return self._call("GET", "/v1/secrets/" + name)

    get_variable = getVariable
    set_variable = setVariable
    set_condition = setCondition
    get_secret = getSecret = secret


cronium = _Cronium()

# `import cronium` then `cronium.input()` works too: the module offers the object's calls
input = cronium.input  # noqa: A001 - Cronium's name; shadows the builtin only in this module
output = cronium.output
event = cronium.event
secret = get_secret = getSecret = cronium.secret  # noqa: N816 - Cronium's name
getVariable = get_variable = cronium.getVariable  # noqa: N816 - Cronium's name
setVariable = set_variable = cronium.setVariable  # noqa: N816 - Cronium's name
setCondition = set_condition = cronium.setCondition  # noqa: N816 - Cronium's name
