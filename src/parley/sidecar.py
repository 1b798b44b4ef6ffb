"""Running as a desktop app's sidecar: tell the parent which port was bound, and exit with it.

A desktop app (Tether's Tauri shell) starts `parley serve --port 0 --parent-pid PID`:

- With `--port 0` the operating system picks a free port; once the server accepts connections,
  the first line on stdout is one JSON object, `{"parley":"listening","port":N,"url":"http://HOST:N"}`,
  so the parent reads one line to learn where to connect (logs go to stderr).
- With `--parent-pid PID` the server watches that process (a cheap check twice a second) and,
  when it is gone, shuts down the way SIGTERM does: running replies get the drain's grace
  period, then the process exits 0. A crashed app leaves no server behind.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

log = logging.getLogger("parley.sidecar")

PARENT_POLL_SECONDS = 0.5


def listening_line(host: str, port: int) -> str:
    """The one machine-readable line announcing the bound port."""
    shown_host = f"[{host}]" if ":" in host else host
    return json.dumps({"parley": "listening", "port": port, "url": f"http://{shown_host}:{port}"})


def process_alive(pid: int) -> bool:
    """Whether process `pid` still runs. A zombie (ended, not yet reaped by its own parent) is gone."""
    if sys.platform == "win32":
        return _windows_process_alive(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # no /proc (macOS), or it ended meanwhile
        return False
    # The state follows the command name, which is in parentheses and may itself hold any character.
    return stat[stat.rfind(")") + 2 : stat.rfind(")") + 3] == "Z"


def _windows_process_alive(pid: int) -> bool:  # pragma: no cover - exercised on Windows only
    import ctypes

    synchronize, wait_timeout = 0x00100000, 0x102
    kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined,unused-ignore]
    handle = kernel32.OpenProcess(synchronize, False, pid)
    if not handle:
        return False
    try:
        return bool(kernel32.WaitForSingleObject(handle, 0) == wait_timeout)
    finally:
        kernel32.CloseHandle(handle)


@dataclass(frozen=True)
class Sidecar:
    """What `parley serve` does for a parent process: announce the port, follow the parent's life."""

    announce: bool = False
    parent_pid: int | None = None
    out: TextIO | None = None

    @classmethod
    def for_serve(cls, announce: bool, parent_pid: int | None) -> Sidecar:
        """The port line goes to a duplicate of stdout made now: llama.cpp's model loading points
        file descriptors 1 and 2 at /dev/null for a while (from its worker thread), and a line
        written meanwhile through them would be lost."""
        out = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8") if announce else None
        return cls(announce, parent_pid, out)

    @property
    def active(self) -> bool:
        return self.announce or self.parent_pid is not None

    def started(self, bound: tuple[str, int], stop: Callable[[], None]) -> asyncio.Task[None] | None:
        """Called once the server listens: print the port line, start watching the parent."""
        if self.announce:
            out = self.out or sys.stdout
            out.write(listening_line(*bound) + "\n")
            out.flush()
        if self.parent_pid is None:
            return None
        return asyncio.get_running_loop().create_task(watch_parent(self.parent_pid, stop), name="parley-parent-watch")


async def watch_parent(pid: int, stop: Callable[[], None], interval: float = PARENT_POLL_SECONDS) -> None:
    """Call `stop` once process `pid` has ended."""
    # Polling, because no portable call waits for a process that is not our child.
    while True:
        if not process_alive(pid):
            break
        await asyncio.sleep(interval)
    log.info("parent process %d is gone: shutting down", pid)
    stop()
