"""pipeline.json's attempt history: every attempt at every stage, however it ended (src.runs owns the file)."""

from __future__ import annotations

import time
from pathlib import Path

from src.reproduce.jobs import JobsFailed
from src.runs import RunFileError, read_pipeline, write_pipeline


def run_stage(pipeline, stage: str, record: dict, out: Path) -> None:
    """One attempt at a stage of ``pipeline`` (a stages.Pipeline), appended to its history however it ends."""
    attempt = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "wall_time_s": None, "status": "interrupted"}
    start = time.perf_counter()
    try:
        attempt["status"] = "ran" if getattr(pipeline, stage)() else "skipped"
    except JobsFailed as err:
        attempt["status"] = "failed"
        raise SystemExit(f"error: stage {stage} failed: {err}") from None
    except SystemExit:
        attempt["status"] = "failed"
        raise
    except KeyboardInterrupt:
        raise SystemExit(f"error: pipeline stopped during stage {stage}; re-run it to resume") from None
    finally:
        attempt["wall_time_s"] = time.perf_counter() - start
        record["stages"][stage] = with_attempt(record["stages"].get(stage), attempt)
        write_pipeline(out, record)


def with_attempt(stage: dict | None, attempt: dict) -> dict:
    """A stage's record plus one attempt. ``wall_time_s`` (time spent working: all attempts but skips) and
    ``skipped`` (every attempt was a skip) summarise the ``attempts`` for readers of the older flat record."""
    old = stage or {}
    attempts = old.get("attempts", [legacy_attempt(old)] if old else []) + [attempt]
    worked = [a for a in attempts if a["status"] != "skipped"]
    return {
        "wall_time_s": sum(a["wall_time_s"] or 0 for a in worked),
        "skipped": not worked,
        "attempts": attempts,
    }


def legacy_attempt(stage: dict) -> dict:
    """The one attempt a stage record written before attempts were kept stands for (its start unknown)."""
    return {
        "started": None,
        "wall_time_s": stage.get("wall_time_s"),
        "status": "skipped" if stage.get("skipped") else "ran",
    }


def read_record(out: Path) -> dict:
    """pipeline.json as the last run left it (a fresh record when there is none or it does not parse)."""
    try:
        return read_pipeline(out)
    except RunFileError:
        return {"stages": {}}
