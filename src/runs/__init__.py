"""The run directory and its one owner: the record (summary.json, provenance.json) and tuning.json.

``read_run``/``find_runs`` are the only readers, ``write_summary``/``write_provenance``/``write_tuning`` the only
writers; train, tune, evaluate, reproduce and report all go through them (README: Extending → run files).
"""

from src.runs.index import read_pipeline, read_tuning, write_pipeline, write_tuning
from src.runs.record import (
    DONE,
    SCHEMA,
    Run,
    RunFileError,
    failed_runs,
    find_runs,
    flatten,
    identity,
    matches,
    read_json,
    read_run,
    run_dirs,
    write_json,
    write_provenance,
    write_summary,
)

__all__ = [
    "DONE", "SCHEMA", "Run", "RunFileError", "failed_runs", "find_runs", "flatten", "identity", "matches",
    "read_json", "read_pipeline", "read_run", "read_tuning", "run_dirs", "write_json", "write_pipeline",
    "write_provenance", "write_summary", "write_tuning",
]  # fmt: skip
