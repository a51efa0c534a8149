"""The paper's protocol end to end: ``python -m src.reproduce --profile <conf/pipeline name>`` (``make reproduce``).

Stages, in order (Yin et al. 2019, §4): full-precision pretraining → Table 1 sweeps (STE × bits × seed, each from its
FP checkpoint) → optionally the coarse gradients at those minima (src.gradients) → Figure 2 (identity STE from the 4-bit relu / clipped_relu minima) → Figure 4 (relu STE from the
2-bit clipped_relu minimum) → the two-layer model (theory figures, certificate, training per STE) → report.
Runs land in <out>/<stage>/<run_name>/; a run whose summary.json says finished or diverged is skipped, so re-running
after an interruption continues: an unfinished or failed run is launched again into its own dir, where src.train
resumes it from checkpoints/last.ckpt. One pipeline per out dir (<out>/.lock); stopping the pipeline (SIGTERM,
Ctrl-C, even SIGKILL) stops its training processes too. <out>/pipeline.json keeps every attempt of every stage.
"""

from __future__ import annotations

import argparse
import fcntl
import math
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from itertools import groupby, product
from pathlib import Path

from omegaconf import OmegaConf

from src.provenance import REPO
from src.report import build_report
from src.runs import (
    Run,
    RunFileError,
    failed_runs,
    matches,
    read_pipeline,
    read_run,
    read_tuning,
    write_pipeline,
)
from src.theory import certificate_table
from src.theory.figures import write_figures

PROFILES = REPO / "conf" / "pipeline"
Job = (
    dict  # src.train overrides {key: value}; always names experiment, seed, and ste + quant.bits or quant=fp
)
# Seconds a multirun has after SIGTERM (Lightning stops at the next batch end) before its group is SIGKILLed.
GRACE_S = 30

# The first process of every multirun, leader of the multirun's own process group. It dies with the pipeline
# (PR_SET_PDEATHSIG: also when the pipeline is SIGKILLed and can clean up nothing) and then stops its whole group:
# src.train and the workers of a launcher such as joblib, which stay in the group.
# argv: the pipeline's pid, GRACE_S, the command.
SUPERVISOR = """
import ctypes, os, signal, subprocess, sys
class Stop(Exception): pass
def stop(*_): raise Stop
signal.signal(signal.SIGTERM, stop)
child = None
try:
    if sys.platform == "linux":  # elsewhere only the pipeline's SIGTERM/Ctrl-C handling stops the group
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != int(sys.argv[1]):  # the pipeline died before prctl
        raise Stop
    child = subprocess.Popen(sys.argv[3:])
    sys.exit(child.wait())
except Stop:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.killpg(0, signal.SIGTERM)
    try:
        child and child.wait(float(sys.argv[2]))
    except subprocess.TimeoutExpired:
        pass
    os.killpg(0, signal.SIGKILL)  # what is left of the group, this process included
"""


def load_profile(name: str) -> dict:
    """conf/pipeline/<name>.yaml merged onto its ``base`` profile (lists are replaced, not appended)."""
    path = PROFILES / f"{name}.yaml"
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in PROFILES.glob("*.yaml")))
        raise SystemExit(f"error: unknown profile {name!r}; valid profiles: {names}")
    cfg = OmegaConf.load(path)
    base = cfg.pop("base", None)
    return OmegaConf.to_container(OmegaConf.merge(load_profile(base), cfg) if base else cfg)


def find(stage_dir: Path, job: Job) -> Run | None:
    """The done run of ``job`` in stage_dir, found by its identity (src/runs.matches), if any.

    A job that names no tag or weight quantizer means none (float weights); the init checkpoint is not compared:
    the earlier stage's run it names is fixed by the job's seed and experiment, wherever the out dir now lies.
    """
    want = {"tag": None, "wquant": "fp"} | {k: v for k, v in job.items() if k != "init.checkpoint"}
    runs = [read_run(p.parent) for p in sorted(stage_dir.glob("*/summary.json"))]
    return next((run for run in runs if run.done and matches(run, want)), None)


def checkpoint_of(stage_dir: Path, job: Job) -> str:
    """The last checkpoint of a done earlier-stage run: where a later stage starts."""
    run = find(stage_dir, job)
    if run is None or run.status == "diverged":
        raise SystemExit(
            f"error: a later stage starts from {job} in {stage_dir}, which "
            f"{'diverged' if run else 'is missing'}"
        )
    return run["checkpoint"]


def launch(stage_dir: Path, jobs: list[Job], sweep: tuple[str, ...], overrides: list[str], launcher) -> bool:
    """Run the jobs not done yet as Hydra multiruns over the ``sweep`` keys; False if all were done already.
    An unfinished or failed run is launched again as it is: it lands in its own dir and src.train resumes it."""
    todo = [job for job in jobs if find(stage_dir, job) is None]
    for args in sweeps(todo, sweep):
        run_hydra(stage_dir, args + overrides, launcher)
    return bool(todo)


def sweeps(jobs: list[Job], keys: tuple[str, ...]) -> list[list[str]]:
    """Override lists for as few multiruns as cover ``jobs``: jobs equal but for ``keys`` share one when they
    form the full product of those keys' values; otherwise the first key alone is swept."""
    rest = lambda job: [(k, str(v)) for k, v in job.items() if k not in keys]  # noqa: E731
    calls = []
    for fixed, group in groupby(sorted(jobs, key=rest), key=rest):
        group = list(group)
        values = {k: sorted({str(job[k]) for job in group}) for k in keys}
        if len(group) != math.prod(len(v) for v in values.values()):
            calls += [
                a
                for first in values[keys[0]]
                for a in sweeps([j for j in group if str(j[keys[0]]) == first], keys[1:] or keys)
            ]
            continue
        calls.append([f"{k}={v}" for k, v in fixed] + [f"{k}={','.join(v)}" for k, v in values.items()])
    return calls


class JobsFailed(Exception):
    """A multirun exited non-zero; the message names its failed jobs (or its last log line) and the log."""


def train_command(stage_dir: Path, args: list[str], launcher: str | None) -> list[str]:
    """The ``python -m src.train -m`` call of one multirun, its runs landing in <stage_dir>/<run_name>."""
    return [
        sys.executable,
        "-m",
        "src.train",
        "-m",
        *args,
        f"hydra.sweep.dir={stage_dir}",
        "hydra.sweep.subdir=${run_name}",
        *([f"hydra/launcher={launcher}"] if launcher else []),
    ]


def run_hydra(stage_dir: Path, args: list[str], launcher: str | None) -> None:
    """One multirun, its output in <stage_dir>/logs/; raises JobsFailed when it exits non-zero."""
    start = time.time()
    code, log = run_logged(stage_dir, train_command(stage_dir, args, launcher), args)
    if code:
        raise JobsFailed(f"{failed_jobs(stage_dir, since=start) or last_line(log)}; log: {log}")


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
    """Why a multirun failed, in one line: its last ``error: ...`` line, else the message Hydra prints above
    its "Set the environment variable HYDRA_FULL_ERROR=1" hint (an override it could not apply), joined."""
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


def supervised(cmd: list[str], out) -> int:
    """Run cmd under SUPERVISOR in a process group of its own; if this process is stopped (KeyboardInterrupt,
    which SIGTERM raises too), stop that group and wait for it, so no training process outlives the pipeline."""
    argv = [sys.executable, "-c", SUPERVISOR, str(os.getpid()), str(GRACE_S), *cmd]
    proc = subprocess.Popen(argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        return proc.wait()
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()  # the supervisor SIGKILLs what is left of its group after GRACE_S


def failed_jobs(stage_dir: Path, since: float) -> str:
    """'N jobs failed: <run> (<reason>), ...' from the runs that failed since ``since``."""
    failed = failed_runs(stage_dir, since)
    jobs = ", ".join(f"{run.path.name} ({run['reason'] or 'no reason given'})" for run in failed)
    return f"{len(failed)} job{'s' * (len(failed) != 1)} failed: {jobs}" if failed else ""


class Pipeline:
    """The stages of one profile, writing under ``out``; each stage returns whether it ran anything."""

    def __init__(self, profile: dict, out: Path, launcher: str | None, extra: list[str]):
        self.p, self.out, self.launcher, self.extra = profile, out, launcher, extra

    def overrides(self, stage: str, images: bool = True) -> list[str]:
        """Profile overrides for a stage's runs; ``extra`` (command line) only for MNIST/CIFAR runs."""
        o = self.p["overrides"]
        return o["all"] + (o["images"] + o[stage] + self.extra if images else o[stage])

    def run(
        self, stage: str, jobs: list[Job], sweep: tuple[str, ...], images=True, where: str | None = None
    ) -> bool:
        """Launch a stage's unfinished jobs under <out>/<where or stage>."""
        return launch(self.out / (where or stage), jobs, sweep, self.overrides(stage, images), self.launcher)

    def pretrain(self) -> bool:
        jobs = [
            {"experiment": net, "quant": "fp", "seed": s} for net in self.p["nets"] for s in self.p["seeds"]
        ]
        return self.run("pretrain", jobs, sweep=("seed",))

    def table1(self) -> bool:
        jobs = []
        for net in self.p["nets"]:
            for seed in self.p["seeds"]:
                fp = checkpoint_of(self.out / "pretrain", {"experiment": net, "quant": "fp", "seed": seed})
                jobs += [
                    {"experiment": net, "seed": seed, "init.checkpoint": fp, "quant.bits": b, "ste": ste}
                    for b in self.p["bits"]
                    for ste in self.p["stes"]
                ]
        return self.run("table1", jobs, sweep=("ste", "quant.bits"))

    def from_table1(self, stage: str, experiment: str, ste: str, bits: int, sources: list[str]) -> bool:
        """Continue from 4-bit (Figure 2) or 2-bit (Figure 4) ResNet-20 minima of Table 1, first seed."""
        seed, jobs = self.p["seeds"][0], []
        for source in sources:
            start = {"experiment": "resnet20_cifar10", "seed": seed, "quant.bits": bits, "ste": source}
            jobs.append(
                {
                    "experiment": experiment,
                    "seed": seed,
                    "quant.bits": bits,
                    "ste": ste,
                    "tag": f"from_{source}",
                    "init.checkpoint": checkpoint_of(self.out / "table1", start),
                }
            )
        return self.run(stage, jobs, sweep=("tag",))

    def gradients(self) -> bool:
        """The full-batch coarse gradient of the paper's STEs at every done Table-1 quantized run (src.gradients,
        the profile's ``gradients`` options), written into the run's dir where the report finds it. Only the
        command line's data.* overrides (where the data is, checksums) reach it: the run's config is the rest."""
        flags = [f"--{k.replace('_', '-')}={v}" for k, v in self.p.get("gradients", {}).items()]
        data = [o for o in self.extra if o.startswith("data.")]
        ran = False
        for summary in sorted((self.out / "table1").glob("*/summary.json")):
            run = read_run(summary.parent)
            if run.status != "finished" or (run.path / "gradients.json").exists():
                continue
            args = [str(run.path), *flags, *data]
            code, log = run_logged(self.out / "gradients", [sys.executable, "-m", "src.gradients", *args], args)
            if code:
                raise JobsFailed(f"{last_line(log)}; log: {log}")
            ran = True
        return ran

    def fig2(self) -> bool:
        return self.from_table1("fig2", "fig2_identity_repelled", "identity", 4, ["relu", "clipped_relu"])

    def fig4(self) -> bool:
        return self.from_table1("fig4", "fig4_relu_2bit", "relu", 2, ["clipped_relu"])

    def wxa(self) -> bool:
        """Weights × activations: each ``weights`` setting × ``bits`` × ``stes``, from each seed's FP
        checkpoint; one multirun per weight setting."""
        jobs = []
        for net in self.p["nets"]:
            for seed in self.p["seeds"]:
                fp = checkpoint_of(self.out / "pretrain", {"experiment": net, "quant": "fp", "seed": seed})
                jobs += [
                    {"experiment": net, "seed": seed, "init.checkpoint": fp, "quant.bits": b, "ste": ste, **w}
                    for w in self.p["weights"]
                    for b in self.p["bits"]
                    for ste in self.p["stes"]
                ]
        return self.run("wxa", jobs, sweep=("quant.bits",))

    def tune_dir(self, net: str, ste: str, bits: int) -> Path:
        """Where src.tune studies one STE at one bit width: <out>/tune/<experiment>/<ste>-<bits>bit/."""
        return self.out / "tune" / net / f"{ste}-{bits}bit"

    def tune(self) -> bool:
        """Per net, STE and bit width, an Optuna study of lr and weight decay (src/tune.py) from the first seed's
        FP checkpoint, validated on data.holdout (in the ``tune`` overrides); ``tuning`` sets its trials/space."""
        seed, ran = self.p["seeds"][0], False
        flags = [f"--{k.replace('_', '-')}={v}" for k, v in self.p.get("tuning", {}).items()]
        for net in self.p["nets"]:
            fp = checkpoint_of(self.out / "pretrain", {"experiment": net, "quant": "fp", "seed": seed})
            for bits, ste in product(self.p["bits"], self.p["stes"]):
                where = self.tune_dir(net, ste, bits)
                study = read_tuning(where)
                if study.get("complete") and study["n_trials"] >= self.p.get("tuning", {}).get("trials", 0):
                    continue
                args = [f"experiment={net}", f"seed={seed}", f"init.checkpoint={fp}", f"quant.bits={bits}"]
                args += [f"ste={ste}", *self.overrides("tune")]
                code, log = run_logged(
                    where, [sys.executable, "-m", "src.tune", f"--out={where}", *flags, *args], args
                )
                if code:
                    raise JobsFailed(f"{last_line(log)}; log: {log}")
                ran = True
        return ran

    def tuned(self) -> bool:
        """Table 1's runs again (its overrides: the same schedule, full training set, test-set validation) with
        each study's best lr and weight decay, tagged ``tuned``, into <out>/tuned/."""
        jobs = []
        for net, seed in product(self.p["nets"], self.p["seeds"]):
            fp = checkpoint_of(self.out / "pretrain", {"experiment": net, "quant": "fp", "seed": seed})
            for bits, ste in product(self.p["bits"], self.p["stes"]):
                where = self.tune_dir(net, ste, bits)
                best = read_tuning(where).get("best")
                if best is None:
                    raise SystemExit(f"error: stage tuned needs a study with a finished trial in {where}")
                job = {"experiment": net, "seed": seed, "init.checkpoint": fp, "quant.bits": bits, "ste": ste}
                jobs.append(job | {"tag": "tuned"} | best["params"])
        return launch(self.out / "tuned", jobs, ("seed",), self.overrides("table1"), self.launcher)

    def two_layer(self) -> bool:
        """Theory figures and the certificate table (once), then the two-layer model trained per STE."""
        theory = self.out / "two_layer" / "theory"
        ran = not (theory / "certificate.md").exists()
        if ran:
            write_figures(theory)
            (theory / "certificate.md").write_text(certificate_table() + "\n")
        print((theory / "certificate.md").read_text(), flush=True)
        jobs = [
            {"experiment": "two_layer", "seed": s, "quant.bits": 1, "ste": ste}
            for s in self.p["seeds"]
            for ste in self.p["two_layer_stes"]
        ]
        return self.run("two_layer", jobs, ("ste", "seed"), images=False, where="two_layer/runs") or ran

    def report(self) -> bool:
        """report.md and its figures under <out>/report."""
        path = build_report(self.out, profile=self.p["name"])
        print(f"report: {path}")
        return True


def main(argv=None) -> None:
    """Parse the command line, take <out>/.lock and run the profile's stages in order, recording each attempt."""
    args = parse_args(argv)
    profile = load_profile(args.profile) | {"name": args.profile}
    if args.seeds:
        profile["seeds"] = args.seeds
    out = Path(args.out or REPO / "outputs" / "reproduce" / args.profile)
    with pipeline_lock(out), sigterm_interrupts():
        record = read_record(out) | {
            "profile": args.profile,
            "seeds": profile["seeds"],
            "data_note": args.data_note,
        }
        pipeline = Pipeline(profile, out, args.launcher, args.extra)
        for stage in profile["stages"]:
            if stage == "report":
                write_pipeline(out, record)
            run_stage(pipeline, stage, record, out)


def run_stage(pipeline: Pipeline, stage: str, record: dict, out: Path) -> None:
    """One attempt at a stage, appended to its history in pipeline.json however it ends."""
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


@contextmanager
def pipeline_lock(out: Path):
    """Create ``out`` and hold an flock on <out>/.lock while the pipeline runs: a second pipeline on the same dir
    is refused in one line, and the kernel drops the lock of a process that died, so a stale lock cannot exist."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        lock = open(out / ".lock", "a+")
    except OSError as err:
        raise SystemExit(f"error: cannot write to --out {out}: {err.strerror}") from None
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            owner = lock.read().strip() or "unknown"
            raise SystemExit(f"error: another pipeline is running on {out} (pid {owner})") from None
        lock.truncate(0)
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        yield


@contextmanager
def sigterm_interrupts():
    """SIGTERM raises KeyboardInterrupt, as Ctrl-C does, so a stopped pipeline stops its multirun and records
    the attempt (Python's default for SIGTERM is to die on the spot, leaving the children running)."""
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def seed_list(text: str) -> list[int]:
    """--seeds 0,1,2 as [0, 1, 2]."""
    try:
        return [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must be comma-separated integers, got {text!r}") from None


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--profile",
        default="smoke",
        help="conf/pipeline/<profile>.yaml: " + ", ".join(sorted(p.stem for p in PROFILES.glob("*.yaml"))),
    )
    parser.add_argument("--seeds", type=seed_list, help="comma-separated seeds (default: the profile's)")
    parser.add_argument("--launcher", help="Hydra launcher for the sweeps, e.g. joblib or submitit_slurm")
    parser.add_argument("--out", help="output directory (default outputs/reproduce/<profile>)")
    parser.add_argument(
        "--data-note", help="where the data came from, for the report (e.g. the CIFAR-10 rebuild)"
    )
    parser.add_argument(
        "extra", nargs="*", help="src.train overrides for the MNIST/CIFAR runs, e.g. trainer=gpu"
    )
    return parser.parse_intermixed_args(argv)  # overrides may come before or after the options


if __name__ == "__main__":
    main()
