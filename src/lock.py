"""One process per output dir: the flock that src.reproduce (a pipeline's out dir) and src.tune (a study's dir) hold.

Standard library only, so a tool takes the lock without importing what another tool needs.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def pipeline_lock(out: Path):
    """Create ``out`` and hold an flock on <out>/.lock while the pipeline runs: a second pipeline on the same dir
    is refused in one line, and the kernel drops the lock of a process that died, so a stale lock cannot exist."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        lock = open(out / ".lock", "a+")
    except OSError as err:
        raise SystemExit(f"error: cannot write to --out {out}: {err.strerror}") from None
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            owner = lock.read().strip() or "unknown"
            raise SystemExit(f"error: another pipeline is running on {out} (pid {owner})") from None
        lock.truncate(0)
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        yield
