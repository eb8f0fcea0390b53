"""The run folder's lock: one writer at a time, for a whole notebook series."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

from medharm_nb.store.files import utc_now

LOCK_FILE = "run.lock"
LOCK_ENV = "MEDHARM_RUN_LOCK"
"""Environment variable by which a lock holder lets its child processes (the notebook kernels
of a ``medharm-nb run``) work inside its lock."""
class RunLocked(RuntimeError):
    """Another process holds the run directory's lock; the message names it."""


class RunLock:
    """An exclusive lock on a run directory: one writer at a time, for a whole series.

    ``medharm-nb run`` holds it from before its manifest is written until the last notebook
    has finished, so a second ``run`` (or ``generate``, or a notebook opened by hand) on the
    same folder is refused instead of rewriting the manifest, config or tables under it.
    The notebook kernels the series starts are its children: the holder puts a secret token
    in their environment (``LOCK_ENV``) and only its SHA-256 in the lock file, and a process
    that carries the holder's token works inside the lock instead of being refused.

    It is an ``flock`` on ``<run_dir>/run.lock``: the kernel releases it when the holder
    exits, however it exits, so a lock left by a killed process never blocks. The file holds
    who took it (pid, host, time, purpose, command) for the message a refused process prints.
    Taking it again in the same process nests (the command, then ``run_generation``, then
    ``generate`` each take it). POSIX only.

    Use as a context manager::

        with RunLock(run_dir, purpose="run"):
            ...  # raises RunLocked on entry while another process holds it
    """

    _held: dict[Path, list] = {}  # lock file -> [fd, depth, pid, token], this process's locks

    def __init__(self, run_dir: str | Path, purpose: str = "generate"):
        self.path = (Path(run_dir) / LOCK_FILE).resolve()
        self.purpose = purpose

    @property
    def token(self) -> str | None:
        """The token this process holds the lock with (None when it does not hold it)."""
        held = self._held.get(self.path)
        return held[3] if held and held[2] == os.getpid() else None

    def acquire(self) -> RunLock:
        """Take the lock without waiting.

        Raises:
            RunLocked: another process holds it; the message names pid, host and start.
        """
        import fcntl
        import secrets

        held = self._held.get(self.path)
        if held and held[2] == os.getpid():
            held[1] += 1
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read_holder(fd)
            os.close(fd)
            inherited = os.environ.get(LOCK_ENV)
            if inherited and holder.get("token_sha256") == _digest(inherited):
                # A child of the holder (a notebook kernel of its series): inside its lock.
                self._held[self.path] = [None, 1, os.getpid(), inherited]
                return self
            raise RunLocked(_locked_message(self.path.parent, holder)) from None
        token = secrets.token_hex(8)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": utc_now(),
                "purpose": self.purpose, "command": " ".join(sys.argv),
                # Only the token's digest is written: the file is readable by anyone who can
                # read the run, and a token copied from it must not admit a second writer.
                "token_sha256": _digest(token)}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
        except OSError:  # the note is for messages only; never keep a lock we can't track
            os.close(fd)
            raise
        self._held[self.path] = [fd, 1, os.getpid(), token]
        return self

    def check(self) -> None:
        """Raise ``RunLocked`` if another process holds the lock; take it not, create nothing."""
        if self.path.exists():
            with self:
                pass

    def release(self) -> None:
        """Release one level of the lock (the last one unlocks the file)."""
        import fcntl

        held = self._held.get(self.path)
        if not held or held[2] != os.getpid():
            return
        held[1] -= 1
        if held[1] == 0:
            del self._held[self.path]
            if held[0] is None:  # inherited from the parent: the parent's to release
                return
            os.ftruncate(held[0], 0)  # an empty file: nobody holds it
            fcntl.flock(held[0], fcntl.LOCK_UN)
            os.close(held[0])

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}


def _locked_message(run_dir: Path, holder: dict[str, Any]) -> str:
    who = (f"pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('since')}"
           if holder else "a process that is still starting")
    command = f" ({holder['command']})" if holder.get("command") else ""
    doing = {"run": "running the notebook series in it", "generate": "generating into it"}.get(
        holder.get("purpose", "generate"), f"working in it ({holder.get('purpose')})")
    return (f"{run_dir} is in use: another process is {doing}: {who}{command}. "
            f"Wait for it to finish or stop it, then run again; nothing was written. "
            f"(A lock left by a killed process frees itself.)")
