"""The run record: the only writer and the only reader of a run dir's summary.json and provenance.json.

<run dir>/
    config.yaml      the resolved config (src.train writes it, ``read_run`` reads it)
    provenance.json  code, versions, hardware, data source of the first start; ``starts``: one entry per start
    summary.json     ``schema``, the run's identity (``choices``, ``identity``), status and reason, metrics, paths
    metrics.csv      one row per epoch (src/runs/files.py)   checkpoints/last.ckpt

A run's identity is every config value that can change its result (``identity``): the flat resolved config without
where files go, how it is logged or shown, and on which device it ran. Tools find a run by it (``matches``), never
by rebuilding its name. Schema 1 is the summary written before this module (no ``schema`` key); it is still read,
its missing fields taken from config.yaml. A newer schema than ``SCHEMA`` is refused with one line.
"""

from __future__ import annotations

import json
import math
import platform
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from src.rundir import atomic_write

SCHEMA = 2
DONE = (
    "finished",
    "diverged",
)  # a run with either status is not run again; "failed" and interrupted ones are
# Config keys (prefixes) that never change a run's result: files, logging, display, device placement, resuming,
# the diagnostics callbacks (a run trains bit-identically with and without them: tests/test_diagnostics.py).
NOT_IDENTITY = (
    "hydra", "paths", "logger", "callbacks", "share", "resume", "run_name",
    "tags", "trainer.accelerator", "trainer.devices", "trainer.num_nodes", "trainer.strategy",
    "trainer.enable_progress_bar", "trainer.enable_model_summary", "trainer.log_every_n_steps",
    "trainer.default_root_dir", "trainer.plugins", "data.root", "data.download", "data.verify_checksums",
    "data.val_batch_size", "data.num_workers", "data.on_device", "model.compile", "model.compile_mode", "plugins",
)  # fmt: skip


class RunFileError(ValueError):
    """A run file that cannot be read (truncated, not JSON, a newer schema): the message names the file."""


def flatten(node: dict, prefix: str = "") -> dict:
    """{"quant": {"bits": 2}} -> {"quant.bits": 2}; keys starting with ``_`` (Hydra's _target_) are left out,
    lists stay lists."""
    out = {}
    for key, value in node.items():
        if str(key).startswith("_"):
            continue
        if isinstance(value, dict):
            out |= flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def identity(config: dict) -> dict:
    """The flat config values that define a run (``NOT_IDENTITY`` removed); an init checkpoint by its path."""
    flat = flatten(config)
    return {k: v for k, v in flat.items() if not any(k == p or k.startswith(p + ".") for p in NOT_IDENTITY)}


def write_json(path: Path, doc: dict) -> None:
    """A run file, atomically (NaN and inf become null: strict JSON readers reject them)."""
    atomic_write(path, json.dumps(_finite(doc), indent=2).encode())


def _finite(x):
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    return None if isinstance(x, float) and not math.isfinite(x) else x


def read_json(path: Path) -> dict:
    """A run file as a dict; {} when it does not exist; RunFileError naming it when it does not parse."""
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise RunFileError(f"{path}: unreadable ({type(err).__name__}: {str(err).splitlines()[0]})") from None
    if not isinstance(doc, dict):
        raise RunFileError(f"{path}: not a JSON object")
    return doc


def write_summary(run_dir: Path, config: dict, choices: dict, fields: dict) -> dict:
    """summary.json: schema, identity and ``fields`` (status, reason, metrics, paths); returns what it wrote."""
    summary = {"schema": SCHEMA, "run_name": config.get("run_name"), **fields}
    groups = {
        k: v for k, v in dict(choices).items() if "/" not in k
    }  # Hydra's own (hydra/launcher, ...) left out
    summary |= {"choices": groups, "identity": identity(config)}
    write_json(Path(run_dir) / "summary.json", summary)
    return summary


def write_provenance(run_dir: Path, now: dict, resumed: bool) -> dict:
    """provenance.json: the first start's record (``now``) plus ``starts``, one entry per start (this one last)."""
    path = Path(run_dir) / "provenance.json"
    record = read_json(path) if resumed else {}
    start = {k: now.get(k) for k in ("git_commit", "time_utc", "command")} | {"host": platform.node()}
    record = (record or now) | {"starts": [*record.get("starts", []), start]}
    write_json(path, record)
    return record


@dataclass(frozen=True)
class Run:
    """One run dir as the tools see it: summary, config and provenance as plain dicts, and where it lies.

    ``stage``: the folders between the directory a tool searched and the run dir (e.g. ("tune", "relu-2bit")).
    """

    path: Path
    summary: dict
    config: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    stage: tuple[str, ...] = ()

    def __getitem__(self, key: str):
        return self.summary.get(key)

    @property
    def status(self) -> str:
        """finished, diverged, failed or interrupted (no summary.json yet: cut off, or still running)."""
        return self["status"] or ("diverged" if self["diverged"] else "finished")

    @property
    def done(self) -> bool:
        return self.status in DONE

    @property
    def started(self) -> str | None:
        """UTC time of the run's last start (ISO 8601), from provenance.json."""
        starts = self.provenance.get("starts") or [{}]
        return starts[-1].get("time_utc") or self.provenance.get("time_utc")

    @property
    def choices(self) -> dict:
        """Hydra's group choices of the run (experiment, data, ste, quant, ...)."""
        return self["choices"] or {}

    @property
    def identity(self) -> dict:
        return self["identity"] or identity(self.config)

    def get(self, key: str):
        """A group choice (``ste``, ``experiment``) or a flat config value (``quant.bits``) of the run."""
        if key in self.choices:
            return self.choices[key]
        return self.identity.get(key, flatten(self.config).get(key))

    def value(self, metric: str) -> float | None:
        """A summary metric, or None unless the run finished with a finite value (a diverged run's last numbers
        describe no minimum: never average them)."""
        x = self[metric]
        if self.status != "finished" or x is None or not math.isfinite(x):
            return None
        return float(x)


def matches(run: Run, job: dict) -> bool:
    """Whether ``run`` is the job given as src.train overrides ({"ste": "relu", "quant.bits": 2, "seed": 0}).

    Group options compare with the run's choices, other keys with its config; a value the job does not set
    (absent) is not compared. ``quant=fp`` runs have no STE: their ``ste`` choice is not compared.
    """
    fp = job.get("quant") == "fp"
    for key, want in job.items():
        if fp and (key == "ste" or key.startswith("quant.")):
            continue
        have = run.get(key)
        if str(have) != str(want) and not (have is None and want in (None, "null")):
            return False
    return True


def read_run(run_dir: Path, stage: tuple[str, ...] = ()) -> Run:
    """The run in ``run_dir``; one without summary.json is ``interrupted`` (cut off, or still running).

    Raises RunFileError naming the file that cannot be read (truncated, not JSON or YAML, a newer schema).
    """
    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    try:
        config = (yaml.safe_load(config_path.read_text()) or {}) if config_path.is_file() else {}
    except (OSError, yaml.YAMLError) as err:
        raise RunFileError(f"{config_path}: unreadable ({type(err).__name__})") from None
    if not isinstance(config, dict):
        raise RunFileError(f"{config_path}: not a mapping")
    summary, provenance = read_json(run_dir / "summary.json"), read_json(run_dir / "provenance.json")
    schema = summary.get("schema", 1) if summary else SCHEMA
    if not isinstance(schema, int) or schema > SCHEMA:
        raise RunFileError(
            f"{run_dir / 'summary.json'}: schema {schema!r}, newer than this code reads ({SCHEMA})"
        )
    if not summary:
        summary = {
            "run_name": config.get("run_name") or run_dir.name,
            "status": "interrupted",
            "reason": "no summary.json: interrupted or still running",
        }
    if "identity" not in summary:  # schema 1, or interrupted: what defines the run comes from its config
        summary = summary | legacy_fields(config, summary)
    return Run(run_dir, summary, config, provenance, stage)


def legacy_fields(config: dict, summary: dict) -> dict:
    """The schema-2 fields a schema-1 (or missing) summary lacks, from the run's config.yaml."""
    data = str((config.get("data") or {}).get("_target_", "")).rsplit(".", 1)[-1]
    data = data.removesuffix("DataModule").lower() or summary.get("data")
    choices = {"data": data, "experiment": summary.get("experiment")}
    for group in ("model", "ste", "quant", "wquant"):
        name = (config.get(group) or {}).get("name")
        if name is not None:
            choices[group] = name
    fields = {
        "model": (config.get("model") or {}).get("name"),
        "ste": (config.get("ste") or {}).get("name"),
        "bits": (config.get("quant") or {}).get("bits"),
        "seed": config.get("seed"),
        "tag": config.get("tag"),
        "data": data,
    }
    return {k: v for k, v in fields.items() if summary.get(k) is None} | {
        "choices": choices,
        "identity": identity(config),
    }


def run_dirs(root: Path, exclude: Path | None = None) -> list[Path]:
    """Every run dir under ``root`` (holding summary.json or provenance.json), sorted; ``exclude`` is skipped
    (a report written inside the searched folder is never read back)."""
    root = Path(root)
    exclude = exclude.resolve() if exclude else None
    dirs = {p.parent for name in ("summary.json", "provenance.json") for p in root.rglob(name)}
    return sorted(d for d in dirs if not (exclude and d.resolve().is_relative_to(exclude)))


def find_runs(roots, exclude: Path | None = None) -> tuple[list[Run], list[str]]:
    """The runs under each root (a run dir itself counts), and one line per run dir that could not be read."""
    runs, problems = [], []
    for root in map(Path, roots):
        for run_dir in run_dirs(root, exclude):
            try:
                runs.append(read_run(run_dir, run_dir.relative_to(root).parts[:-1]))
            except RunFileError as err:
                problems.append(str(err))
    return runs, problems


def failed_runs(folder: Path, since: float = 0.0) -> list[Run]:
    """The runs directly under ``folder`` (a sweep or stage dir) whose summary, written since ``since``
    (epoch seconds), says failed."""
    out = []
    for path in sorted(Path(folder).glob("*/summary.json")):
        if path.stat().st_mtime < since:
            continue  # a run of an earlier multirun in the same dir (the pipeline reuses stage dirs)
        try:
            run = read_run(path.parent)
        except RunFileError:
            continue
        if run.status == "failed":
            out.append(run)
    return out
