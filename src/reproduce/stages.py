"""The stages of a profile (``Pipeline``): each builds its jobs from the profile and the runs of earlier stages,
launches those not done yet and returns whether it ran anything."""

from __future__ import annotations

from itertools import product
from pathlib import Path

from src.report import build_report
from src.report.runs import SETTLE, SETTLED
from src.report.stability import still_moving
from src.reproduce.jobs import Job, checkpoint_of, find, launch, run_tool
from src.runs import read_run, read_tuning
from src.theory import certificate_table
from src.theory.figures import write_figures


class Pipeline:
    """The stages of one profile, writing under ``out``; each stage returns whether it ran anything."""

    def __init__(self, profile: dict, out: Path, launcher: str | None, extra: list[str]):
        self.p, self.out, self.launcher, self.extra = profile, out, launcher, extra

    def overrides(self, stage: str, images: bool = True) -> list[str]:
        """Profile overrides for a stage's runs; ``extra`` (command line) only for MNIST/CIFAR runs."""
        o = self.p["overrides"]
        return o["all"] + (o["images"] + o.get(stage, []) + self.extra if images else o.get(stage, []))

    def run(
        self, stage: str, jobs: list[Job], sweep: tuple[str, ...], images=True, where: str | None = None
    ) -> bool:
        """Launch a stage's unfinished jobs under <out>/<where or stage>."""
        return launch(self.out / (where or stage), jobs, sweep, self.overrides(stage, images), self.launcher)

    def fp_checkpoint(self, net: str, seed: int) -> str:
        """Where a quantized run of ``net`` and ``seed`` starts: its pretrain stage's full-precision checkpoint."""
        return checkpoint_of(self.out / "pretrain", {"experiment": net, "quant": "fp", "seed": seed})

    def pretrain(self) -> bool:
        jobs = [
            {"experiment": net, "quant": "fp", "seed": s} for net in self.p["nets"] for s in self.p["seeds"]
        ]
        return self.run("pretrain", jobs, sweep=("seed",))

    def table1(self) -> bool:
        jobs = []
        for net in self.p["nets"]:
            for seed in self.p["seeds"]:
                fp = self.fp_checkpoint(net, seed)
                jobs += [
                    {"experiment": net, "seed": seed, "init.checkpoint": fp, "quant.bits": b, "ste": ste}
                    for b in self.p["bits"]
                    for ste in self.p["stes"]
                ]
        return self.run("table1", jobs, sweep=("ste", "quant.bits"))

    def figure_starts(self) -> dict[str, tuple[int, list[str]]]:
        """{figure stage: (bits, the STEs of the first seed's ResNet-20 Table-1 minima it starts from)}."""
        return {"fig2": (4, self.p.get("fig2_from", ["relu", "clipped_relu"])), "fig4": (2, ["clipped_relu"])}

    def start(self, bits: int, ste: str) -> Job:
        """A figure's starting minimum as a Table-1 job."""
        return {"experiment": "resnet20_cifar10", "seed": self.p["seeds"][0], "quant.bits": bits, "ste": ste}

    def settle(self) -> bool:
        """Each figure start (of this profile's figure stages) that is still moving by the report's plateau rule
        (its last epoch changed val top-1 by more than the 95 % CI) trained on, with the ``settle`` overrides (the
        Table-1 run's final lr), into <out>/settle/, tagged ``settled``; the figure then starts from that run."""
        jobs = []
        for stage, (bits, sources) in self.figure_starts().items():
            for ste in sources if stage in self.p["stages"] else []:
                run = find(self.out / "table1", self.start(bits, ste))
                if run is not None and still_moving(run):
                    jobs.append(
                        self.start(bits, ste) | {"tag": SETTLED, "init.checkpoint": run["checkpoint"]}
                    )
        return self.run(SETTLE, jobs, sweep=("ste",))

    def from_table1(self, stage: str, experiment: str, ste: str) -> bool:
        """Continue from the figure's ResNet-20 minima: the settled run where the settle stage made one, else the
        Table-1 run."""
        bits, sources = self.figure_starts()[stage]
        jobs = []
        for source in sources:
            start = self.start(bits, source)
            settled = start | {"tag": SETTLED}
            where, start = (SETTLE, settled) if find(self.out / SETTLE, settled) else ("table1", start)
            jobs.append(
                {
                    "experiment": experiment,
                    "seed": self.p["seeds"][0],
                    "quant.bits": bits,
                    "ste": ste,
                    "tag": f"from_{source}",
                    "init.checkpoint": checkpoint_of(self.out / where, start),
                }
            )
        return self.run(stage, jobs, sweep=("tag",))

    def gradients(self) -> bool:
        """The full-batch coarse gradient of the paper's STEs at every done Table-1 quantized run and settled minimum (src.gradients,
        the profile's ``gradients`` options), written into the run's dir where the report finds it. Only the
        command line's data.* overrides (where the data is, checksums) reach it: the run's config is the rest."""
        flags = [f"--{k.replace('_', '-')}={v}" for k, v in self.p.get("gradients", {}).items()]
        data = [o for o in self.extra if o.startswith("data.")]
        ran = False
        for summary in sorted(
            p for where in ("table1", SETTLE) for p in (self.out / where).glob("*/summary.json")
        ):
            run = read_run(summary.parent)
            if run.status != "finished" or (run.path / "gradients.json").exists():
                continue
            run_tool(self.out / "gradients", "src.gradients", [str(run.path), *flags, *data])
            ran = True
        return ran

    def fig2(self) -> bool:
        return self.from_table1("fig2", "fig2_identity_repelled", "identity")

    def fig4(self) -> bool:
        return self.from_table1("fig4", "fig4_relu_2bit", "relu")

    def wxa(self) -> bool:
        """Weights × activations: each ``weights`` setting × ``bits`` × ``stes``, from each seed's FP
        checkpoint; one multirun per weight setting."""
        jobs = []
        for net in self.p["nets"]:
            for seed in self.p["seeds"]:
                fp = self.fp_checkpoint(net, seed)
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
            fp = self.fp_checkpoint(net, seed)
            for bits, ste in product(self.p["bits"], self.p["stes"]):
                where = self.tune_dir(net, ste, bits)
                study = read_tuning(where)
                if study.get("complete") and study["n_trials"] >= self.p.get("tuning", {}).get("trials", 0):
                    continue
                args = [f"experiment={net}", f"seed={seed}", f"init.checkpoint={fp}", f"quant.bits={bits}"]
                args += [f"ste={ste}", *self.overrides("tune")]
                run_tool(where, "src.tune", [f"--out={where}", *flags, *args])
                ran = True
        return ran

    def tuned(self) -> bool:
        """Table 1's runs again (its overrides: the same schedule, full training set, test-set validation) with
        each study's best lr and weight decay, tagged ``tuned``, into <out>/tuned/."""
        jobs = []
        for net, seed in product(self.p["nets"], self.p["seeds"]):
            fp = self.fp_checkpoint(net, seed)
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
