"""One writer per run folder: :class:`RunLock`, a lock file created atomically inside the folder.

``with RunLock(folder):`` creates ``folder/.tcpa-lock.json`` with ``O_CREAT | O_EXCL`` (so exactly one of
several processes racing for it succeeds) holding the writer's pid, host, process start time, start time and
command line, and removes it on exit (also on error). A second writer is refused with
:class:`~tcpa_core.errors.RunLockedError` naming the holder. A lock left behind by a process that no longer
exists on this host (killed, machine crash) is stale: it is detected and taken over. A lock held by another
host cannot be checked from here and is always respected.

Written by hand because no maintained library does all of this: ``fcntl.flock`` is not reliable on network
file systems and leaves no record of who holds a lock, and lock-file packages do not report their holder.
The lock is re-entrant within one process (``train`` inside ``demo`` or ``compare`` on the same folder).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import socket
import sys
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any

from .errors import RunLockedError

LOCK_FILE = ".tcpa-lock.json"
_HELD: dict[Path, list[Any]] = {}  # folders this process holds -> [nesting depth, token of the lock file]
_UNREADABLE_GRACE_S = 30.0  # an empty or unreadable lock file older than this is a writer killed mid-creation


def _process_start(pid: int) -> str | None:
    """Start time of ``pid`` in clock ticks since boot (Linux ``/proc``), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]


def _alive(pid: int, start: str | None) -> bool:
    """Whether the process ``pid`` (started at ``start``, when recorded) still runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    if start is not None:
        now = _process_start(pid)
        return now is None or now == start
    return True


def _describe(holder: dict[str, Any]) -> str:
    command = holder.get("command") or "?"
    return (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} (`{command}`, started "
            f"{holder.get('started', '?')})")


class RunLock:
    """Exclusive lock on a run folder while a process writes into it (context manager).

    Args:
        folder: the run folder (created when missing).
        command: what the holder is doing, shown to a refused writer (default: this process's command line).
    """

    def __init__(self, folder: str | Path, command: str | None = None) -> None:
        self.folder = Path(folder).expanduser()
        self.path = self.folder / LOCK_FILE
        self.command = command if command is not None else " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
        self._token = uuid.uuid4().hex
        self._key: Path | None = None

    # ------------------------------------------------------------------ reading
    def holder(self) -> dict[str, Any] | None:
        """The recorded holder of the lock, or None when the folder is not locked."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        except OSError:
            return {}
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            return {}
        return value if isinstance(value, dict) else {}

    def _stale(self, holder: dict[str, Any]) -> bool:
        if not holder:
            try:
                age = _dt.datetime.now().timestamp() - self.path.stat().st_mtime
            except OSError:
                return False
            return age > _UNREADABLE_GRACE_S
        if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
            return False
        return not _alive(int(holder["pid"]), holder.get("pid_start"))

    # ------------------------------------------------------------------ acquiring
    def _record(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "host": socket.gethostname(), "pid_start": _process_start(os.getpid()),
                "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "command": self.command, "token": self._token}

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as handle:
            json.dump(self._record(), handle)
            handle.flush()
            os.fsync(handle.fileno())
        return True

    def _take_over(self, stale: dict[str, Any]) -> None:
        """Move a stale lock aside; if it turns out to be a fresh lock of a faster process, put it back."""
        aside = self.path.with_name(f"{LOCK_FILE}.stale-{self._token}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # someone else moved it first
        try:
            moved = json.loads(aside.read_text())
        except (OSError, json.JSONDecodeError):
            moved = {}
        if moved.get("token") != stale.get("token") or moved.get("pid") != stale.get("pid"):
            with contextlib.suppress(FileExistsError, OSError):
                os.link(aside, self.path)  # never replaces a lock that appeared meanwhile
        with contextlib.suppress(OSError):
            aside.unlink()

    def acquire(self) -> RunLock:
        """Take the lock or raise :class:`RunLockedError` naming its holder."""
        key = self.folder.resolve()
        if key in _HELD:
            _HELD[key][0] += 1
            self._key = key
            return self
        if self.folder.exists() and not self.folder.is_dir():
            raise RunLockedError(f"{self.folder} is a file, not a run folder; pass a folder path.")
        self.folder.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            if self._create():
                _HELD[key] = [1, self._token]
                self._key = key
                return self
            holder = self.holder()
            if holder is None:
                continue  # released between our attempt and the read
            if self._stale(holder):
                self._take_over(holder)
                continue
            break
        holder = self.holder() or {}
        raise RunLockedError(
            f"The run folder {self.folder} is in use by {_describe(holder)}. Wait for it to finish or pass "
            f"another --out; if that process no longer runs, delete {self.path}."
        )

    def release(self) -> None:
        """Drop the lock (the file is removed only while it is still ours)."""
        key, self._key = self._key, None
        if key is None:
            return
        _HELD[key][0] -= 1
        if _HELD[key][0] > 0:
            return
        token = _HELD.pop(key)[1]
        holder = self.holder()
        if holder and holder.get("token") == token:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


__all__ = ["LOCK_FILE", "RunLock"]
