"""Tune one run's optimizer: ``python -m src.tune --out DIR [--trials N] [--sampler-seed S] <src.train overrides>``.

Optuna's TPE sampler (seeded) searches the ranges of conf/hparams_search/<space>.yaml. Each trial is one ordinary
run, the config ``python -m src.train <overrides>`` composes plus the trial's values, trained by src.train.train
in <out>/trial<N>_<run_name>/ with the usual run files; its objective is that run's best validation top-1
(summary.json ``val_acc_best``). Validation must be a holdout of the training set (``data.holdout=N``): selecting
on the test set is refused. A diverged trial is PRUNED (TPE ranks it below every finished one) and a crashed one
FAIL; neither stops the study. The study lives in <out>/study.db (SQLite): the same command again continues it,
first the trial a kill cut off (src.train resumes its run from the last checkpoint). <out>/tuning.json sums it up
after every trial.

Why not the hydra-optuna-sweeper plugin: it pins optuna<3 (2.10.1), whose SQLite storage fails under SQLAlchemy 2
(an AssertionError in create_study), so its studies live in memory and a killed sweep starts over; and a sweeper
cannot retrain the winner on the full training set. Its in-memory sweep does run with numpy 2 on Python 3.11.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback
from pathlib import Path

import optuna
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from src.config import ConfigError, validate
from src.provenance import REPO
from src.reproduce import pipeline_lock
from src.rundir import SaveError, atomic_write
from src.train import DONE, read_json, record_failure, train

SPACES = REPO / "conf" / "hparams_search"
STUDY = "tune"  # the study's name inside study.db
ENDED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)  # count towards n_trials
log = logging.getLogger(__name__)


def load_space(name: str) -> dict:
    """conf/hparams_search/<name>.yaml as a dict; an unknown name is a one-line error listing the valid ones."""
    path = SPACES / f"{name}.yaml"
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in SPACES.glob("*.yaml")))
        raise ConfigError(f"unknown search space {name!r}; valid: {names}")
    return OmegaConf.to_container(OmegaConf.load(path))


def compose_run(overrides: list[str], run_dir: Path, number: int = 0) -> DictConfig:
    """The config ``python -m src.train <overrides>`` gets, as job ``number`` writing to run_dir."""
    try:
        with initialize_config_dir(str(REPO / "conf"), version_base="1.3", job_name="tune"):
            cfg = compose("train", overrides=overrides, return_hydra_config=True)
    except HydraException as err:
        raise ConfigError(str(err).strip().splitlines()[0]) from None
    with open_dict(cfg):
        cfg.hydra.job.num = number
        cfg.hydra.runtime.output_dir = str(run_dir)
    HydraConfig.instance().set_config(cfg)  # ${hydra:...} (run_name, output dir) resolve against this job
    return cfg


def trial_config(out: Path, number: int, overrides: list[str], params: dict) -> DictConfig:
    """Trial ``number``'s run config: the overrides plus its values, in <out>/trial<N>_<run_name>/."""
    cfg = compose_run(overrides + [f"{key}={value!r}" for key, value in params.items()], out, number)
    with read_write(cfg.hydra):  # set_config made it read-only; run_name could resolve only after it
        cfg.hydra.runtime.output_dir = str(out / f"trial{number}_{cfg.run_name}")
    HydraConfig.instance().set_config(cfg)
    return cfg


def check_base(cfg: DictConfig, overrides: list[str], space: dict) -> None:
    """Before any trial: the run config is valid, validates on a holdout, its data reads, and every searched
    key is one of its keys and not fixed by the overrides (the trial's value would silently replace it)."""
    validate(cfg)
    if "holdout" in cfg.data and not cfg.data.holdout:
        raise ConfigError("tuning selects on the validation set, here the test set: set data.holdout=N")
    fixed = {o.split("=")[0].lstrip("+~") for o in overrides}
    for key in space["params"]:
        if OmegaConf.select(cfg, key) is None or key in fixed:
            raise ConfigError(f"searched key {key} must be in the run config and not set by an override")
    instantiate(cfg.data).prepare_data()  # a holdout or subset larger than the data fails here, in one line


def open_study(out: Path, overrides: list[str], space: dict) -> optuna.Study:
    """<out>/study.db's study, created or loaded; one made with other overrides or ranges is refused."""
    out.mkdir(parents=True, exist_ok=True)
    storage, spec = (
        f"sqlite:///{(out / 'study.db').resolve()}",
        {"overrides": overrides, "params": space["params"]},
    )
    study = optuna.create_study(storage=storage, study_name=STUDY, direction="maximize", load_if_exists=True)
    for key, value in spec.items():
        if study.user_attrs.get(key, value) != value:
            raise ConfigError(
                f"{out} holds a study with other {key} ({study.user_attrs[key]}): use another --out"
            )
        study.set_user_attr(key, value)
    # seeded by sampler_seed + trials so far: a resumed study does not draw its first trials' values again
    sampler = optuna.samplers.TPESampler(
        seed=space["sampler_seed"] + len(study.trials), n_startup_trials=space["n_startup_trials"]
    )
    return optuna.create_study(storage=storage, study_name=STUDY, sampler=sampler, load_if_exists=True)


def run_trial(study: optuna.Study, out: Path, number: int, params: dict, overrides: list[str]) -> None:
    """Train trial ``number`` (or read its summary, if a kill came after the run but before the study heard of
    it) and tell the study. A kill or a failed save leaves it RUNNING, for the next start to resume."""
    cfg = trial_config(out, number, overrides, params)
    run_dir = Path(cfg.paths.output_dir)
    summary = read_json(run_dir / "summary.json")
    if summary.get("status") not in DONE:
        try:
            summary = train(cfg)
        except SaveError:
            raise
        except Exception as err:  # noqa: BLE001 - one trial that crashes must not end the study
            log.error(traceback.format_exc())
            summary = {"status": "failed", "reason": f"error: crashed: {type(err).__name__}: {err}"}
            record_failure(cfg, run_dir, summary["reason"])
    value = summary.get("val_acc_best")
    if summary["status"] == "finished" and value is not None:
        study.tell(number, value)
    else:  # diverged (or no finite accuracy): pruned, ranked below every finished trial by TPE
        study.tell(number, state=TrialState.PRUNED if summary["status"] != "failed" else TrialState.FAIL)


def tune(out: Path, overrides: list[str], space: dict) -> dict:
    """Run the study in ``out`` until space['n_trials'] trials have ended; return tuning.json's content."""
    base = compose_run(overrides, out)  # validated and described in tuning.json, never trained
    check_base(base, overrides, space)
    study = open_study(out, overrides, space)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):  # cut off by a kill
        run_trial(study, out, trial.number, trial.params, overrides)
        write_tuning(out, study, space, base)
    grid = {key: FloatDistribution(r["low"], r["high"], log=r["log"]) for key, r in space["params"].items()}
    while len(study.get_trials(deepcopy=False, states=ENDED)) < space["n_trials"]:
        trial = study.ask(grid)
        run_trial(study, out, trial.number, trial.params, overrides)
        write_tuning(out, study, space, base)
    return write_tuning(out, study, space, base)


def write_tuning(out: Path, study: optuna.Study, space: dict, base: DictConfig) -> dict:
    """<out>/tuning.json: what was tuned, how, every trial (params, value, state, run dir) and the best one."""
    HydraConfig.instance().set_config(base)
    trials = [trial_record(out, trial, base.run_name) for trial in study.trials]
    finished = [t for t in trials if t["state"] == "COMPLETE"]
    record = {
        "objective": "val_acc_best",  # best validation top-1 (%) over a trial's epochs, on data.holdout
        "direction": "maximize",
        "experiment": base.hydra.runtime.choices.get("experiment"),
        "ste": base.ste.name,
        "bits": base.quant.bits,
        "seed": base.seed,
        "holdout": OmegaConf.select(base, "data.holdout"),
        "train_subset": OmegaConf.select(base, "data.train_subset"),
        "max_epochs": base.trainer.max_epochs,
        "overrides": study.user_attrs["overrides"],
        "space": space["params"],
        "sampler": {
            "name": "TPESampler",
            "seed": space["sampler_seed"],
            "n_startup_trials": space["n_startup_trials"],
        },
        "n_trials": space["n_trials"],
        "complete": sum(t["state"] in {s.name for s in ENDED} for t in trials) >= space["n_trials"],
        "storage": "study.db",
        "wall_time_s": sum(t["wall_time_s"] or 0 for t in trials),
        "trials": trials,
        "best": max(finished, key=lambda t: t["value"]) if finished else None,  # ties: the earliest trial
    }
    atomic_write(out / "tuning.json", json.dumps(record, indent=2).encode())
    return record


def trial_record(out: Path, trial: optuna.trial.FrozenTrial, run_name: str) -> dict:
    """One trial for tuning.json, with its run's status and reason from summary.json."""
    run_dir = f"trial{trial.number}_{run_name}"
    summary = read_json(out / run_dir / "summary.json")
    return {
        "number": trial.number,
        "state": trial.state.name,
        "params": trial.params,
        "value": trial.value,
        "run_dir": run_dir,
        "run_status": summary.get("status"),  # the run's summary.json: finished, diverged or failed
        "reason": summary.get("reason"),
        "wall_time_s": summary.get("wall_time_s"),
    }


def main(argv=None) -> None:
    """Parse the command line, lock --out and run (or continue) the study; a bad input is one line."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own line per trial says more
    out = Path(args.out)
    try:
        space = load_space(args.space)
        space |= {
            k: v for k, v in (("n_trials", args.trials), ("sampler_seed", args.sampler_seed)) if v is not None
        }
        if not (isinstance(space["n_trials"], int) and space["n_trials"] >= 1):
            raise ConfigError(f"the number of trials must be an integer >= 1, got {space['n_trials']!r}")
        with pipeline_lock(out):
            record = tune(out, args.overrides, space)
    except (ConfigError, SaveError) as err:
        sys.exit(f"error: {err}")
    except KeyboardInterrupt:
        sys.exit(f"error: tuning stopped; the same command continues it from {out / 'study.db'}")
    best = record["best"]
    print(
        f"best of {len(record['trials'])} trials: "
        + (f"{best['value']:.2f} % with {best['params']}" if best else "none finished")
    )


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", required=True, help="the study's directory (study.db, tuning.json, trial runs)"
    )
    parser.add_argument("--trials", type=int, help="trials in all (default: the space's n_trials)")
    parser.add_argument("--sampler-seed", type=int, help="TPE's seed (default: the space's sampler_seed)")
    parser.add_argument(
        "--space", default="lr_wd", help="conf/hparams_search/<space>.yaml: the ranges searched"
    )
    parser.add_argument(
        "overrides", nargs="*", help="src.train overrides, e.g. experiment=lenet5_mnist data.holdout=5000"
    )
    return parser.parse_intermixed_args(argv)


if __name__ == "__main__":
    main()
