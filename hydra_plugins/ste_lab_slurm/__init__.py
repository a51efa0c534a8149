"""Hydra plugin: the SLURM launcher of conf/hydra/launcher/slurm.yaml (what it adds: src/slurm.py).

Hydra accepts launcher classes from the ``hydra_plugins`` namespace package only; this folder joins it when the
repo root is on sys.path (``python -m src.train`` from the repo root, pytest, submitit's jobs).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import partial
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as StockSlurmLauncher
from omegaconf import OmegaConf, open_dict

from src.runs.job import record_failure
from src.slurm import check_cluster, link_log, watch_without_sacct

log = logging.getLogger(__name__)


class SlurmLauncher(StockSlurmLauncher):
    """See src/slurm.py; ``conf/hydra/launcher/slurm.yaml`` lists the settings."""

    def setup(self, *, hydra_context, task_function, config) -> None:
        super().setup(
            hydra_context=hydra_context, task_function=partial(link_log, task_function), config=config
        )

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import submitit

        check_cluster(self.params.get("partition"))
        executor = submitit.AutoExecutor(
            cluster="slurm",
            folder=self.params["submitit_folder"],
            slurm_max_num_timeout=self.params["max_num_timeout"],
        )
        shared = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(
            **{
                k if k in shared else f"slurm_{k}": v
                for k, v in self.params.items()
                if k not in ("submitit_folder", "max_num_timeout")
            }
        )
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info("SLURM sweep output dir: %s", sweep_dir)
        params = []
        for num, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info("\t#%d : %s", num, " ".join(filter_overrides(overrides)))
            params.append(
                (list(overrides), "hydra.sweep.dir", num, f"job_id_for_{num}", Singleton.get_state())
            )
        watch_without_sacct()
        jobs = executor.map_array(self, *zip(*params, strict=True))
        return [self.result(job, p[0], p[2]) for job, p in zip(jobs, params, strict=True)]

    def result(self, job, overrides: list[str], num: int) -> JobReturn:
        """The job's JobReturn; a job SLURM ended without a result is recorded as failed in its run dir."""
        from submitit.core.utils import FailedJobError, UncompletedJobError

        try:
            return job.results()[0]
        except (FailedJobError, UncompletedJobError) as err:
            message = (
                f"error: SLURM job {job.job_id} ended without a result ({job.state}); log: {job.paths.stdout}"
            )
            log.error("%s\n%s", message, str(err).splitlines()[0])
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(cfg.hydra.job):
            cfg.hydra.job.num = num
        HydraConfig.instance().set_config(cfg)  # the run name resolves ${hydra:...}
        run_dir = Path(cfg.hydra.sweep.dir) / str(cfg.hydra.sweep.subdir)
        record_failure(cfg, run_dir, message)
        return JobReturn(overrides=overrides, status=JobStatus.COMPLETED, _return_value=None)
