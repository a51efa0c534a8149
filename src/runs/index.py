"""The files beside run dirs: a study's tuning.json (src.tune) and a pipeline's stage index, pipeline.json
(src.reproduce). Their only writers and readers."""

from __future__ import annotations

from pathlib import Path

from src.runs.record import read_json, write_json

TUNING, PIPELINE = "tuning.json", "pipeline.json"


def write_tuning(study_dir: Path, doc: dict) -> None:
    """<study dir>/tuning.json: the study (what was tuned, how, every trial and the best), after every trial."""
    write_json(Path(study_dir) / TUNING, doc)


def read_tuning(study_dir: Path) -> dict:
    """<study dir>/tuning.json; {} before the first trial. RunFileError names a file that does not parse."""
    return read_json(Path(study_dir) / TUNING)


def write_pipeline(out: Path, record: dict) -> None:
    """<out>/pipeline.json: the profile, seeds, data note and every attempt of every stage."""
    write_json(Path(out) / PIPELINE, record)


def read_pipeline(out: Path) -> dict:
    """<out>/pipeline.json as the last attempt left it, with ``stages`` ({} when there is none).

    RunFileError names a file that does not parse.
    """
    return {"stages": {}} | read_json(Path(out) / PIPELINE)
