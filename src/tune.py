"""Tune one run's optimizer: ``python -m src.tune --out DIR [--trials N] [--sampler-seed S] <src.train overrides>``.

Optuna's TPE sampler searches the ranges of conf_tools/hparams_search/<space>.yaml, seeded per study: the base
seed plus a stable hash of the model, STE and bits (``study_seed``), so each STE's study draws its own random start-up points.
Trial 0 of every study is the run config's own values (the paper's lr and weight decay). Each trial is one ordinary
run, the config ``python -m src.train <overrides>`` composes plus the trial's values, trained by src.train.train
in <out>/trial<N>_<run_name>/ with the usual run files; its objective is that run's best validation top-1
(summary.json ``val_acc_best``). Validation must be a holdout of the training set (``data.holdout=N``): selecting
on the test set is refused. Optuna's MedianPruner stops a trial whose holdout top-1 after an epoch is below the
median of the earlier trials' at that epoch (``Pruning``; its summary.json says ``pruned``); a diverged trial is
PRUNED too (TPE ranks it below every finished one) and a crashed one FAIL; none stops the study. The winner is
chosen with the holdout's standard error in view (``select``): trials within one SE of the best tie, and the tie
goes to the trial nearest the default. The study lives in <out>/study.db (SQLite): the same command again
continues it, first the trial a kill cut off (src.train resumes its run from the last checkpoint). <out>/tuning.json sums it up
after every trial.

Why not the hydra-optuna-sweeper plugin: it pins optuna<3 (2.10.1), whose SQLite storage fails under SQLAlchemy 2
(an AssertionError in create_study), so its studies live in memory and a killed sweep starts over; and a sweeper
cannot retrain the winner on the full training set. Its in-memory sweep does run with numpy 2 on Python 3.11.

The pruning callback is src/pruning.py, the choice of the winner src/selection.py; what stays here (the study,
its trials' configs, tuning.json) is one loop, a little over 300 lines with this docstring.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import sys
import traceback
from pathlib import Path

import optuna
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, read_write
from optuna.distributions import FloatDistribution
from optuna.pruners import MedianPruner
from optuna.trial import TrialState

from src.compose import compose_run
from src.config import ConfigError, validate
from src.lock import pipeline_lock
from src.paths import REPO
from src.pruning import PRUNED, STUDY, mark_pruned
from src.rundir import SaveError
from src.runs import DONE, read_json
from src.runs import write_tuning as save_tuning
from src.runs.job import record_failure
from src.selection import select
from src.train import train

SPACES = REPO / "conf_tools" / "hparams_search"  # outside conf/: not a training group
ENDED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)  # count towards n_trials
log = logging.getLogger(__name__)


def load_space(name: str) -> dict:
    """conf_tools/hparams_search/<name>.yaml as a dict; an unknown name is a one-line error listing the valid ones."""
    path = SPACES / f"{name}.yaml"
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in SPACES.glob("*.yaml")))
        raise ConfigError(f"unknown search space {name!r}; valid: {names}")
    return OmegaConf.to_container(OmegaConf.load(path))


def trial_config(out: Path, number: int, overrides: list[str], params: dict, space: dict) -> DictConfig:
    """Trial ``number``'s run config: the overrides plus its values, in <out>/trial<N>_<run_name>/, with the
    study's pruning callback (callbacks are not part of a run's identity)."""
    pruner = ",".join(f"{k}:{v}" for k, v in pruner_args(space).items())
    callback = [
        "+callbacks.pruning._target_=src.pruning.Pruning",
        f"+callbacks.pruning.storage={storage_url(out)}",
        f"+callbacks.pruning.number={number}",
        f"+callbacks.pruning.pruner={{{pruner}}}",
    ]
    trial = [f"{key}={value!r}" for key, value in params.items()]
    cfg = compose_run(overrides + trial + callback, out, number)
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
        r, value = space["params"][key], OmegaConf.select(cfg, key)
        if not r["low"] <= value <= r["high"]:  # trial 0 runs the config's own value: a point of the space
            raise ConfigError(
                f"{key}={value} (the config's, tried first) is outside [{r['low']}, {r['high']}]"
            )
    instantiate(cfg.data).prepare_data()  # a holdout or subset larger than the data fails here, in one line


def storage_url(out: Path) -> str:
    return f"sqlite:///{(out / 'study.db').resolve()}"


def study_seed(base_seed: int, cfg: DictConfig) -> tuple[int, str]:
    """This study's TPE seed and the key it comes from: the base seed (--sampler-seed) plus a stable hash of what
    the study tunes (model, STE, bits). Each STE's study draws its own random start-up points (one seed for all
    gave every STE the same design); the same study always draws the same ones."""
    key = f"{cfg.model.name}/{cfg.ste.name}/{cfg.quant.bits}bit"
    return (base_seed + int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)) % 2**31, key


def defaults(cfg: DictConfig, space: dict) -> dict:
    """The run config's own value of every searched key (the paper's lr and weight decay): every study's trial 0."""
    return {key: OmegaConf.select(cfg, key) for key in space["params"]}


def pruner_args(space: dict) -> dict:
    """MedianPruner's arguments (conf_tools/hparams_search: pruner; Optuna's defaults where absent)."""
    return {"n_startup_trials": 5, "n_warmup_steps": 0} | dict(space.get("pruner") or {})


def open_study(out: Path, overrides: list[str], space: dict, base: DictConfig) -> optuna.Study:
    """<out>/study.db's study, created or loaded; one made with other overrides or ranges is refused. A new study
    gets the run config's own values (``defaults``) enqueued as its first trial."""
    out.mkdir(parents=True, exist_ok=True)
    storage, spec = storage_url(out), {"overrides": overrides, "params": space["params"]}
    study = optuna.create_study(storage=storage, study_name=STUDY, direction="maximize", load_if_exists=True)
    for key, value in spec.items():
        if study.user_attrs.get(key, value) != value:
            raise ConfigError(
                f"{out} holds a study with other {key} ({study.user_attrs[key]}): use another --out"
            )
        study.set_user_attr(key, value)
    # seeded by the study's seed + trials so far: a resumed study does not draw its first trials' values again
    seed, _ = study_seed(space["sampler_seed"], base)
    sampler = optuna.samplers.TPESampler(
        seed=seed + len(study.trials), n_startup_trials=space["n_startup_trials"]
    )
    pruner = MedianPruner(**pruner_args(space))
    study = optuna.create_study(
        storage=storage, study_name=STUDY, sampler=sampler, pruner=pruner, load_if_exists=True
    )
    if not study.trials:
        study.enqueue_trial(defaults(base, space))
    return study


def run_trial(
    study: optuna.Study, out: Path, number: int, params: dict, overrides: list[str], space: dict
) -> None:
    """Train trial ``number`` (or read its summary, if a kill came after the run but before the study heard of
    it) and tell the study. A kill or a failed save leaves it RUNNING, for the next start to resume. A run the
    pruner stopped (Pruning) has its summary.json status set to ``pruned`` and is told PRUNED."""
    cfg = trial_config(out, number, overrides, params, space)
    run_dir = Path(cfg.paths.output_dir)
    summary = read_json(run_dir / "summary.json")
    if summary.get("status") not in (*DONE, PRUNED):
        try:
            summary = train(cfg)
        except SaveError:
            raise
        except Exception as err:  # noqa: BLE001 - one trial that crashes must not end the study
            log.error(traceback.format_exc())
            summary = {"status": "failed", "reason": f"error: crashed: {type(err).__name__}: {err}"}
            record_failure(cfg, run_dir, summary["reason"])
    pruned = next(t for t in study.get_trials(deepcopy=False) if t.number == number).user_attrs.get(PRUNED)
    if pruned and summary["status"] == "finished":
        summary = mark_pruned(run_dir, summary, pruned)
    value = summary.get("val_acc_best")
    if summary["status"] == "finished" and value is not None:
        study.tell(number, value)
    else:  # diverged (or no finite accuracy): pruned, ranked below every finished trial by TPE
        study.tell(number, state=TrialState.PRUNED if summary["status"] != "failed" else TrialState.FAIL)


def tune(out: Path, overrides: list[str], space: dict) -> dict:
    """Run the study in ``out`` until space['n_trials'] trials have ended; return tuning.json's content."""
    base = compose_run(overrides, out)  # validated and described in tuning.json, never trained
    check_base(base, overrides, space)
    study = open_study(out, overrides, space, base)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):  # cut off by a kill
        run_trial(study, out, trial.number, trial.params, overrides, space)
        write_tuning(out, study, space, base)
    grid = {key: FloatDistribution(r["low"], r["high"], log=r["log"]) for key, r in space["params"].items()}
    while len(study.get_trials(deepcopy=False, states=ENDED)) < space["n_trials"]:
        trial = study.ask(grid)  # trial 0: the enqueued defaults
        run_trial(study, out, trial.number, trial.params, overrides, space)
        write_tuning(out, study, space, base)
    return write_tuning(out, study, space, base)


def write_tuning(out: Path, study: optuna.Study, space: dict, base: DictConfig) -> dict:
    """<out>/tuning.json: what was tuned, how, every trial (params, value, state, run dir), the selection (best
    trial, its SE, the ties, the chosen one: ``select``) and as ``best`` the chosen trial, which stage tuned retrains."""
    HydraConfig.instance().set_config(base)
    trials = [trial_record(out, trial, base.run_name) for trial in study.trials]
    seed, seed_key = study_seed(space["sampler_seed"], base)
    selection = select(trials, defaults(base, space), space["params"])
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
            "seed": seed,  # this study's own: base_seed + a stable hash of seed_key (study_seed)
            "base_seed": space["sampler_seed"],
            "seed_key": seed_key,
            "n_startup_trials": space["n_startup_trials"],
        },
        "pruner": {"name": "MedianPruner", "on": "val/acc per epoch (holdout top-1)", **pruner_args(space)},
        "default": defaults(base, space),  # enqueued as trial 0
        "n_trials": space["n_trials"],
        "complete": sum(t["state"] in {s.name for s in ENDED} for t in trials) >= space["n_trials"],
        "storage": "study.db",
        "wall_time_s": sum(t["wall_time_s"] or 0 for t in trials),
        "trials": trials,
        "selection": selection,
        "best": next((t for t in trials if t["number"] == selection["chosen"]), None),  # the chosen trial
    }
    save_tuning(out, record)
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
        "run_status": summary.get("status"),  # the run's summary.json: finished, diverged, pruned or failed
        "intermediate": {str(k): v for k, v in trial.intermediate_values.items()},  # epoch: holdout top-1
        "val_examples": summary.get("val_examples"),  # the holdout's n
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
        seed = space["sampler_seed"]
        if not (isinstance(seed, int) and 0 <= seed < 2**31):  # TPE adds the trial count; numpy takes < 2**32
            raise ConfigError(f"the sampler seed must be an integer in [0, {2**31 - 1}], got {seed!r}")
        had = (out.is_dir(), (out / ".lock").exists())
        with pipeline_lock(out):
            record = tune(out, args.overrides, space)
    except (ConfigError, SaveError) as err:
        if "had" in locals():
            undo_lock(out, *had)
        sys.exit(f"error: {err}")
    except KeyboardInterrupt:
        sys.exit(f"error: tuning stopped; the same command continues it from {out / 'study.db'}")
    best = record["best"]
    print(
        f"best of {len(record['trials'])} trials: "
        + (f"{best['value']:.2f} % with {best['params']}" if best else "none finished")
    )


def undo_lock(out: Path, had_dir: bool, had_lock: bool) -> None:
    """After a refused start that made no study: remove the .lock file (and --out) this start created."""
    if (out / "study.db").exists():
        return
    if not had_lock:
        (out / ".lock").unlink(missing_ok=True)
    if not had_dir and out.is_dir() and not any(out.iterdir()):
        out.rmdir()


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
        "--space", default="lr_wd", help="conf_tools/hparams_search/<space>.yaml: the ranges searched"
    )
    parser.add_argument(
        "overrides", nargs="*", help="src.train overrides, e.g. experiment=lenet5_mnist data.holdout=5000"
    )
    return parser.parse_intermixed_args(argv)


if __name__ == "__main__":
    main()
