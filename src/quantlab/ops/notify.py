"""systemd's notify protocol in a few lines: one datagram to $NOTIFY_SOCKET per message.

`Type=notify` units learn from it when a process is ready (`READY=1`), what
it is doing (`STATUS=...`, shown by `systemctl status`), that its main loop
still turns (`WATCHDOG=1`; without it for `WatchdogSec=` systemd restarts the
unit) and that it is stopping (`STOPPING=1`). A path starting with `@` is in
the abstract namespace. Without $NOTIFY_SOCKET (not under systemd) every call
does nothing. A failed send is ignored: reporting must never take the process
down.
"""

from __future__ import annotations

import os
import socket
import time


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address
        usec = env.get("WATCHDOG_USEC", "")
        #: Seconds between WATCHDOG=1 messages: half of systemd's WatchdogSec, as sd_watchdog_enabled advises.
        self.watchdog_every = int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 else None
        self._next_watchdog = 0.0
        self._last_status = ""
        self.is_ready = False

    def send(self, *lines: str) -> None:
        if not self.address:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto("\n".join(lines).encode(), self.address)
        except OSError:
            pass

    def ready(self, status: str = "") -> None:
        """READY=1, once: the process has started and done its first real work."""
        if not self.is_ready:
            self.is_ready = True
            self._last_status = status
            self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> None:
        """STATUS=text, only when it changed (systemd keeps the last one)."""
        if text != self._last_status:
            self._last_status = text
            self.send(f"STATUS={text}")

    def watchdog(self) -> None:
        """WATCHDOG=1 at most every half watchdog period: call it after each real loop iteration."""
        if self.watchdog_every is None:
            return
        now = time.monotonic()
        if now >= self._next_watchdog:
            self._next_watchdog = now + self.watchdog_every
            self.send("WATCHDOG=1")

    def stopping(self, status: str = "") -> None:
        self.send("STOPPING=1", *([f"STATUS={status}"] if status else []))
