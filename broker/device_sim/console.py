"""Commands typed into a running device-sim: its terminal, or a pipe.

    sms                      an SMS from +15555550100 ("Hello from device-sim #N")
    sms SENDER TEXT...       an SMS from SENDER (a number, or a sender id such as MyBank)

The simulated phone receives it and reports it to the broker as its app
would: an `incoming` frame on our WebSocket protocol, the signed
`sms:received` webhook for the SMS Gateway app. Read with the loop's own
reader (no thread, the descriptor's blocking mode untouched), and only from
a terminal or a pipe: a simulator run by a test or a service (stdin
/dev/null or a file) reads nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from collections.abc import Awaitable, Callable
from typing import Final

from broker.device_sim.phone import Event, log

STDIN: Final = 0
DEFAULT_SENDER: Final = "+15555550100"
HELP: Final = "type `sms SENDER TEXT` (or just `sms`) to have the phone receive an SMS"

Receive = Callable[[str, str], Awaitable[object]]


def parse(line: str, count: int) -> tuple[str, str] | None:
    """(sender, text) of an `sms` command; None for anything else."""
    words = line.strip().split(maxsplit=2)
    if not words or words[0].lower() != "sms":
        return None
    if len(words) == 1:
        return DEFAULT_SENDER, f"Hello from device-sim #{count}"
    return words[1], words[2] if len(words) == 3 else f"Hello from device-sim #{count}"


def readable(fd: int) -> bool:
    """A terminal or a pipe: what the loop can watch and a person can type into."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return os.isatty(fd) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


class Console:
    """Reads commands from `fd` while started; each `sms` calls `receive`."""

    def __init__(self, fd: int | None, receive: Receive, emit: Callable[[Event], None]) -> None:
        self.fd = fd
        self.receive = receive
        self.emit = emit
        self.count = 0
        self._buffer = b""
        self._tasks: set[asyncio.Task[object]] = set()
        self._watching = False

    def start(self) -> bool:
        """Watch `fd` if it is a terminal or a pipe; False if not."""
        if self.fd is None or not readable(self.fd):
            return False
        try:
            asyncio.get_running_loop().add_reader(self.fd, self._on_readable)
        except (OSError, ValueError, NotImplementedError):
            return False
        self._watching = True
        self.emit(Event("commands", None, HELP))
        return True

    def stop(self) -> None:
        if self._watching and self.fd is not None:
            self._watching = False
            with contextlib.suppress(OSError, ValueError):
                asyncio.get_running_loop().remove_reader(self.fd)
        for task in self._tasks:
            task.cancel()

    def _on_readable(self) -> None:
        assert self.fd is not None  # watched
        try:
            data = os.read(self.fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # end of input: the phone runs on, without commands
            self.stop()
            return
        *lines, self._buffer = (self._buffer + data).split(b"\n")
        for raw in lines:
            line = raw.decode(errors="replace").strip()
            if not line:
                continue
            command = parse(line, self.count + 1)
            if command is None:
                self.emit(Event("commands", None, f"unknown command {line[:40]!r}: {HELP}"))
                continue
            self.count += 1
            task = asyncio.get_running_loop().create_task(self._receive(*command))
            self._tasks.add(task)
            task.add_done_callback(self._done)

    async def _receive(self, sender: str, text: str) -> object:
        return await self.receive(sender, text)

    def _done(self, task: asyncio.Task[object]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("sms command failed", exc_info=task.exception())
