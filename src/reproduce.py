"""The paper's protocol end to end: ``python -m src.reproduce --profile smoke|paper|demo`` (``make reproduce``).

Stages, in order (PAPER.md §5-6): full-precision pretraining → Table 1 sweeps (STE × bits × seed, each from its
FP checkpoint) → Figure 2 (identity STE from the 4-bit relu / clipped_relu minima) → Figure 4 (relu STE from the
2-bit clipped_relu minimum) → the two-layer model (theory figures, certificate, training per STE) → report.
Runs land in <out>/<stage>/<run_name>/; a run whose summary.json exists is skipped, so re-running after an
interruption continues (an unfinished run is moved aside to <run>.interrupted-<time> and started again).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from itertools import groupby
from pathlib import Path

from omegaconf import OmegaConf

from src.provenance import REPO
from src.report import build_report
from src.theory import certificate_table
from src.theory.figures import write_figures

PROFILES = REPO / "conf" / "pipeline"
Job = (
    dict  # src.train overrides {key: value}; always names experiment, seed, and ste + quant.bits or quant=fp
)


def load_profile(name: str) -> dict:
    """conf/pipeline/<name>.yaml merged onto its ``base`` profile (lists are replaced, not appended)."""
    path = PROFILES / f"{name}.yaml"
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in PROFILES.glob("*.yaml")))
        raise SystemExit(f"error: unknown profile {name!r}; valid profiles: {names}")
    cfg = OmegaConf.load(path)
    base = cfg.pop("base", None)
    return OmegaConf.to_container(OmegaConf.merge(load_profile(base), cfg) if base else cfg)


def summaries(stage_dir: Path) -> list[dict]:
    """Every finished run of a stage (its summary.json)."""
    return [json.loads(p.read_text()) for p in sorted(stage_dir.glob("*/summary.json"))]


def matches(run: dict, job: Job) -> bool:
    """Whether a finished run (summary.json) is ``job``."""
    want = {
        "experiment": job["experiment"],
        "seed": job["seed"],
        "tag": job.get("tag"),
        "bits": None if job.get("quant") == "fp" else job["quant.bits"],
    }
    if want["bits"] is not None:
        want["ste"] = job["ste"]
    return all(run.get(k) == v for k, v in want.items())


def find(stage_dir: Path, job: Job) -> dict | None:
    """The finished run of ``job`` in stage_dir, if any."""
    return next((run for run in summaries(stage_dir) if matches(run, job)), None)


def checkpoint_of(stage_dir: Path, job: Job) -> str:
    """The last checkpoint of a finished earlier-stage run: where a later stage starts."""
    run = find(stage_dir, job)
    if run is None or run["diverged"]:
        raise SystemExit(
            f"error: a later stage starts from {job} in {stage_dir}, which "
            f"{'diverged' if run else 'is missing'}"
        )
    return run["checkpoint"]


def launch(stage_dir: Path, jobs: list[Job], sweep: tuple[str, ...], overrides: list[str], launcher) -> bool:
    """Run the unfinished jobs as Hydra multiruns over the ``sweep`` keys; False if all had finished already."""
    for config in stage_dir.glob("*/config.yaml"):  # started, never finished: keep it aside, start it again
        if not (config.parent / "summary.json").exists():
            config.parent.rename(f"{config.parent}.interrupted-{time.strftime('%Y%m%d-%H%M%S')}")
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


def run_hydra(stage_dir: Path, args: list[str], launcher: str | None) -> None:
    """One ``python -m src.train -m`` call; its output goes to <stage_dir>/logs/, a failure stops the pipeline."""
    logs = stage_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{time.strftime('%Y%m%d-%H%M%S')}-{len(list(logs.iterdir()))}.log"
    cmd = [
        sys.executable,
        "-m",
        "src.train",
        "-m",
        *args,
        f"hydra.sweep.dir={stage_dir}",
        "hydra.sweep.subdir=${run_name}",
        *([f"hydra/launcher={launcher}"] if launcher else []),
    ]
    print(f"[{stage_dir.name}] {' '.join(args)}", flush=True)
    with open(log, "w") as out:
        out.write(" ".join(cmd) + "\n")
        out.flush()
        code = subprocess.run(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT).returncode
    if code:
        last = (log.read_text().strip().splitlines() or ["no output"])[-1]
        raise SystemExit(f"error: stage {stage_dir.name} failed ({last}); log: {log}")


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

    def fig2(self) -> bool:
        return self.from_table1("fig2", "fig2_identity_repelled", "identity", 4, ["relu", "clipped_relu"])

    def fig4(self) -> bool:
        return self.from_table1("fig4", "fig4_relu_2bit", "relu", 2, ["clipped_relu"])

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
    """Parse the command line and run the profile's stages in order, recording their wall times."""
    args = parse_args(argv)
    profile = load_profile(args.profile) | {"name": args.profile}
    if args.seeds:
        profile["seeds"] = [int(s) for s in args.seeds.split(",")]
    out = Path(args.out or REPO / "outputs" / "reproduce" / args.profile)
    out.mkdir(parents=True, exist_ok=True)
    record_path = out / "pipeline.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else {"stages": {}}
    record |= {"profile": args.profile, "seeds": profile["seeds"], "data_note": args.data_note}
    pipeline = Pipeline(profile, out, args.launcher, args.extra)
    for stage in profile["stages"]:
        if stage == "report":
            record_path.write_text(json.dumps(record, indent=2))
        start = time.perf_counter()
        ran = getattr(pipeline, stage)()
        record["stages"][stage] = {"wall_time_s": time.perf_counter() - start, "skipped": not ran}
        record_path.write_text(json.dumps(record, indent=2))


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--profile", default="smoke", help="conf/pipeline/<profile>.yaml: paper, smoke or demo"
    )
    parser.add_argument("--seeds", help="comma-separated seeds (default: the profile's)")
    parser.add_argument("--launcher", help="Hydra launcher for the sweeps, e.g. joblib or submitit_slurm")
    parser.add_argument("--out", help="output directory (default outputs/reproduce/<profile>)")
    parser.add_argument(
        "--data-note", help="where the data came from, for the report (e.g. the CIFAR-10 rebuild)"
    )
    parser.add_argument(
        "extra", nargs="*", help="src.train overrides for the MNIST/CIFAR runs, e.g. trainer=gpu"
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    main()
