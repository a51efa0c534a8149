"""What hydra/launcher=stacked does with a sweep (the plugin, hydra_plugins/ste_lab_stacked, only wires it in).

1. Compose every job's config as Hydra would (its sweep subdir, .hydra/ files) without training it.
2. Group the jobs that can share a model (src/stacked/plan.py), at most ``max_stack`` per group.
3. Per group: build its runs; unless ``force``, measure its stack against one by one on copies of its model and
   run it one by one when the stack is not faster (said once per model and K); a stack that does not fit in
   memory fails its jobs with one line naming the group and K.
4. Train each group as a stack (src/stacked/group.py) and every other job as the basic launcher would.
"""

from __future__ import annotations

import copy
import logging
import traceback
from collections.abc import Sequence
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, configure_log, run_job, setup_globals
from omegaconf import DictConfig, open_dict, read_write

from src.config import ConfigError
from src.rundir import SaveError
from src.runs import DONE, RunFileError, read_json
from src.runs.job import record_failure
from src.stacked.fit import Slice
from src.stacked.group import device_and_precision, train_built
from src.stacked.options import check_max_stack
from src.stacked.plan import plan, use
from src.stacked.probe import StackTooBig, speedup
from src.stacked.ste import add_bounds, stack_base
from src.train import build

log = logging.getLogger(__name__)
ONE_BY_ONE = "one by one"


class StackedSweep:
    """One sweep under hydra/launcher=stacked; ``launch`` is Hydra's Launcher.launch."""

    def __init__(
        self, hydra_context, task_function, config: DictConfig, max_stack: int, force: bool, probe_steps: int
    ):
        self.context, self.task, self.config = hydra_context, task_function, config
        self.max_stack, self.force, self.probe_steps = check_max_stack(max_stack), force, probe_steps
        self.said: set = set()  # the verdicts already logged (each is said once per sweep)

    def say(self, message: str) -> None:
        if message not in self.said:
            self.said.add(message)
            log.warning(message)

    def job_config(self, overrides: Sequence[str], num: int) -> DictConfig:
        cfg = self.context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(cfg):
            cfg.hydra.job.id = cfg.hydra.job.num = num
        return cfg

    def run_alone(self, overrides: Sequence[str], num: int) -> JobReturn:
        """One job as the basic launcher runs it (src.train.main: records its own failure)."""
        ret = run_job(
            hydra_context=self.context,
            task_function=self.task,
            config=self.job_config(overrides, num),
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return ret

    def open_job(self, overrides: Sequence[str], num: int) -> tuple[JobReturn, DictConfig]:
        """The job's run dir and .hydra/ files, as Hydra makes them for any job, and its full config (with the
        hydra node) for training it later: run_job with a task that only keeps the config."""
        kept = []

        def keep(task_cfg: DictConfig) -> None:
            full = copy.deepcopy(task_cfg)
            with open_dict(full):
                full.hydra = HydraConfig.instance().cfg.hydra  # the job's own, output dir set
            kept.append(full)

        ret = run_job(
            hydra_context=self.context,
            task_function=keep,
            config=self.job_config(overrides, num),
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
            configure_logging=False,
        )
        return ret, kept[0]

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        nums = range(initial_job_idx, initial_job_idx + len(job_overrides))
        overrides = dict(zip(nums, job_overrides, strict=True))
        jobs = []
        for num, over in overrides.items():
            cfg = use(self.job_config(over, num))
            with (
                read_write(cfg.hydra.runtime),
                open_dict(cfg.hydra.runtime),
            ):  # as run_job sets it (grouping only)
                cfg.hydra.runtime.output_dir = str(
                    Path(cfg.hydra.sweep.dir, str(cfg.hydra.sweep.subdir)).absolute()
                )
            jobs.append((num, use(cfg), cfg.hydra.runtime.choices.data))
        stacks, alone = plan(jobs, self.max_stack)
        self.announce(stacks, alone, len(jobs))
        returns = {num: self.run_alone(overrides[num], num) for num in sorted(alone)}
        for group in stacks:
            returns |= self.run_group(group, overrides)
        return [returns[num] for num in nums]

    def announce(self, stacks: list[list[int]], alone: dict[int, str], total: int) -> None:
        if not stacks:
            reasons = "; ".join(sorted(set(alone.values())))
            self.say(f"stacked launcher: no jobs to stack, running all {total} one by one ({reasons})")
            return
        sizes = ", ".join(str(len(g)) for g in stacks)
        log.info(
            "stacked launcher: %d jobs in %d stacks (K = %s), %d one by one",
            total,
            len(stacks),
            sizes,
            len(alone),
        )
        for num, why in sorted(alone.items()):
            log.info("\t#%d one by one: %s", num, why)

    def run_group(self, group: list[int], overrides: dict) -> dict[int, JobReturn]:
        """Build the group's runs, check the stack, train it; each job's JobReturn by number."""
        opened = {num: self.open_job(overrides[num], num) for num in group}
        slices, failed, done = {}, {}, {}
        for num, (_, cfg) in opened.items():
            summary = read_json(Path(cfg.hydra.runtime.output_dir) / "summary.json")
            if (
                summary.get("status") in DONE
            ):  # the sweep launched again: this job ended before, keep it as it is
                log.info("#%d already %s: %s", num, summary["status"], cfg.hydra.runtime.output_dir)
                done[num] = summary
                continue
            try:
                run_dir, resume, datamodule, module = build(use(cfg))
                slices[num] = Slice(cfg, run_dir, datamodule, module, resume)
            except (ConfigError, SaveError, RunFileError) as err:  # as src.train.main records a bad job
                failed[num] = f"error: {err}"
        verdict = self.check(list(slices.values())) if slices else None
        if verdict == ONE_BY_ONE:
            return {num: self.run_alone(overrides[num], num) for num in group if num not in done} | {
                num: self.result(opened[num][0], done[num]) for num in done
            }
        failed |= dict.fromkeys(slices, verdict) if verdict else self.train(slices)
        for num, message in failed.items():
            cfg = use(opened[num][1])
            log.error("#%d %s", num, message)
            record_failure(cfg, Path(cfg.hydra.runtime.output_dir), message)
        summaries = done | {num: s.summary for num, s in slices.items() if num not in failed}
        return {num: self.result(ret, summaries.get(num)) for num, (ret, _) in opened.items()}

    @staticmethod
    def result(ret: JobReturn, summary: dict | None) -> JobReturn:
        """The job's JobReturn with src.train.main's return value: its best val top-1 (None if it failed)."""
        ret.return_value = (summary or {}).get("val_acc_best")
        return ret

    def check(self, slices: list[Slice]) -> str | None:
        """None to stack; ONE_BY_ONE when the stack is measured slower here (unless force); else the one-line
        error of a stack that does not fit in memory."""
        first, k = slices[0], len(slices)
        model = copy.deepcopy(first.module.model)  # the probe steps copies, never the run
        fixed_alpha = first.cfg.quant.alpha_mode == "fixed"
        if fixed_alpha:
            add_bounds(model, first.cfg.ste.name)
        base = stack_base(model, fixed_alpha)
        device, precision = device_and_precision(first.cfg)
        first.datamodule.setup("fit", device=device)  # where the stack's shared copy will live
        x, y = next(iter(first.datamodule._train_epoch(0, 0, 1)))
        x = precision.convert_input(x.to(device))
        steps = 0 if self.force else self.probe_steps
        try:
            with precision.forward_context():
                gain = speedup(precision.convert_module(model.to(device)), base,
                               first.module.loss_fn, x, y.to(device), k, steps)  # fmt: skip
        except StackTooBig as err:
            name = f"{first.cfg.model.name}/{first.cfg.hydra.runtime.choices.data}"
            smaller = f"try hydra.launcher.max_stack={k // 2}" if k > 1 else "it does not fit alone either"
            return f"error: stacked group {name} (K={k}) does not fit in memory ({err}); {smaller}"
        if steps and gain <= 1:
            self.say(
                f"stacked launcher: a stack of {k} {first.cfg.model.name} runs is {gain:.2f}x the throughput of one "
                f"by one on {device} (measured over {steps} steps): running them one by one "
                "(hydra.launcher.force=true stacks anyway)"
            )
            return ONE_BY_ONE
        return None

    def train(self, slices: dict[int, Slice]) -> dict[int, str]:
        """Train the stack; the jobs it failed (a crash fails those not yet finished), with their messages."""
        try:
            train_built(list(slices.values()))
        except (ConfigError, SaveError, RunFileError) as err:
            message = f"error: {err}"
        except Exception as err:  # noqa: BLE001 - as src.train.main in a sweep: the traceback to the log, the sweep goes on
            log.error(traceback.format_exc())
            message = f"error: crashed: {type(err).__name__}: {err}"
        else:
            return {}
        return {num: message for num, s in slices.items() if s.summary is None}
