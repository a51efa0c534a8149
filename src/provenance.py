"""What produced a result: code version, library versions and hardware, saved beside every run and report."""

from __future__ import annotations

import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from src.paths import REPO

PACKAGES = (
    "torch",
    "torchvision",
    "pytorch-lightning",
    "torchmetrics",
    "hydra-core",
    "omegaconf",
    "wandb",
    "numpy",
)


def git_commit() -> str:
    """HEAD's hash, with ``+dirty`` when tracked files differ from it; ``unknown`` outside a git checkout."""

    def git(*args):
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode:
            return "unknown"
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def versions() -> dict[str, str]:
    """Exact installed versions of the stack (pyproject.toml holds ranges; these are what ran)."""

    def one(name):
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    return {"python": platform.python_version(), **{name: one(name) for name in PACKAGES}}


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware() -> dict[str, str | int]:
    """The machine: CPU, core count, torch threads and the GPU if one is used."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {
        "machine": platform.machine(),
        "cpu": cpu_name(),
        "cpu_count": torch.multiprocessing.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
        "platform": platform.platform(),
    }


def provenance() -> dict:
    """Everything above plus the command line and the time, as one JSON-able dict."""
    return {
        "git_commit": git_commit(),
        "versions": versions(),
        "hardware": hardware(),
        "command": " ".join(sys.argv),
        "time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
