"""Real OpenSSH sshd daemons on 127.0.0.1 ports, started and stopped by the tests."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import asyncssh

from cronium_bus.embedded import free_port, port_open

SSHD = "/usr/sbin/sshd"


class Sshd:
    """One sshd with its own host key, accepting ``client_key`` for root."""

    def __init__(self, root: Path, client_public: bytes, port: int = 0) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.host_key = asyncssh.generate_private_key("ssh-ed25519")
        self.host_key.write_private_key(str(root / "host_key"))
        (root / "host_key").chmod(0o600)
        (root / "authorized_keys").write_bytes(client_public)
        self.log = root / "sshd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def host_key_line(self) -> str:
        return self.host_key.export_public_key().decode().strip()

    @property
    def known_hosts(self) -> str:
        return f"[127.0.0.1]:{self.port} {self.host_key_line}\n"

    def config(self) -> str:
        return (
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {self.root}/host_key\n"
            f"AuthorizedKeysFile {self.root}/authorized_keys\nPidFile {self.root}/sshd.pid\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
            "StrictModes no\nPermitRootLogin prohibit-password\nMaxSessions 64\n"
            "MaxStartups 200:30:400\nLogLevel INFO\n"
        )

    def start(self) -> None:
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)
        (self.root / "sshd_config").write_text(self.config())
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(self.root / "sshd_config")], stderr=log
            )
        # wait for *this* daemon to listen (the log says so), not just for the port to answer
        ready = f"Server listening on 127.0.0.1 port {self.port}"
        deadline = time.monotonic() + 10
        while self.log.read_text().count(ready) < self.starts + 1:
            assert self.proc.poll() is None, self.log.read_text()[-2000:]
            assert time.monotonic() < deadline, "sshd did not start"
            time.sleep(0.02)
        self.starts += 1
        assert port_open("127.0.0.1", self.port)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def new_host_key(self) -> None:
        """Replace the host key (as a reinstalled or impersonated server would)."""
        self.host_key = asyncssh.generate_private_key("ssh-ed25519")
        self.host_key.write_private_key(str(self.root / "host_key"))
        (self.root / "host_key").chmod(0o600)

    def accepted(self) -> int:
        """How many connections authenticated so far."""
        return self.log.read_text().count("Accepted publickey")
