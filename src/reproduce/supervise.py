"""Supervised child processes: ``python -m src.reproduce.supervise <pipeline pid> <grace s> <command...>``.

The supervisor is the first process of every multirun, leader of the multirun's own process group. It dies with the
pipeline (PR_SET_PDEATHSIG: also when the pipeline is SIGKILLed and can clean up nothing) and then stops its whole
group: src.train and the workers of a launcher such as joblib, which stay in the group. Standard library only (and
src.paths), since one starts per multirun.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from src.paths import REPO

# Seconds a multirun has after SIGTERM (Lightning stops at the next batch end) before its group is SIGKILLed.
GRACE_S = 30


class Stop(Exception):
    """SIGTERM reached the supervisor, or the pipeline it serves is gone."""


def stop(*_) -> None:
    raise Stop


def supervise(pipeline_pid: int, grace_s: float, cmd: list[str]) -> int:
    """Run cmd and return its exit code; on SIGTERM or the pipeline's death stop the whole group (this included)."""
    signal.signal(signal.SIGTERM, stop)
    child = None
    try:
        if sys.platform == "linux":  # elsewhere only the pipeline's SIGTERM/Ctrl-C handling stops the group
            ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != pipeline_pid:  # the pipeline died before prctl
            raise Stop
        child = subprocess.Popen(cmd)
        return child.wait()
    except Stop:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        os.killpg(0, signal.SIGTERM)
        try:
            if child is not None:
                child.wait(grace_s)
        except subprocess.TimeoutExpired:
            pass
        os.killpg(0, signal.SIGKILL)  # what is left of the group, this process included
        return 1


def supervised(cmd: list[str], out) -> int:
    """Run cmd under the supervisor in a process group of its own; if this process is stopped (KeyboardInterrupt,
    which SIGTERM raises too), stop that group and wait for it, so no training process outlives the pipeline."""
    argv = [sys.executable, "-m", "src.reproduce.supervise", str(os.getpid()), str(GRACE_S), *cmd]
    proc = subprocess.Popen(argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        return proc.wait()
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()  # the supervisor SIGKILLs what is left of its group after GRACE_S


def run_logged(stage_dir: Path, cmd: list[str], args: list[str]) -> tuple[int, Path]:
    """Run cmd supervised, its output in <stage_dir>/logs/<time>-<n>.log; return its exit code and the log."""
    logs = stage_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{time.strftime('%Y%m%d-%H%M%S')}-{len(list(logs.iterdir()))}.log"
    print(f"[{stage_dir.name}] {' '.join(args)}", flush=True)
    with open(log, "w") as out:
        out.write(" ".join(cmd) + "\n")
        out.flush()
        return supervised(cmd, out), log


def last_line(log: Path) -> str:
    """Why a supervised command failed, in one line: its last ``error: ...`` line, else the message Hydra prints
    above its "Set the environment variable HYDRA_FULL_ERROR=1" hint (an override it could not apply), joined."""
    lines = log.read_text().splitlines()[1:]  # the first is the command (run_logged)
    errors = [line.strip()[len("error: ") :] for line in lines if line.strip().startswith("error: ")]
    if errors:
        return errors[-1]
    hints = [i for i, line in enumerate(lines) if "HYDRA_FULL_ERROR" in line]
    if hints:
        block = []
        for line in reversed(lines[: hints[-1]]):
            if not line.strip() and block:
                break
            if line.strip() and not line.strip().startswith(("full_key:", "object_type=")):
                block.insert(0, line.strip())
        if block:
            return " ".join(block)
    return next((line.strip() for line in reversed(lines) if line.strip()), "no output")


if __name__ == "__main__":
    sys.exit(supervise(int(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]))
