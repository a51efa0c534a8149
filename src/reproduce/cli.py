"""The pipeline's command line: arguments, the out dir's lock, SIGTERM as Ctrl-C, and the stages in order."""

from __future__ import annotations

import argparse
import signal
from contextlib import contextmanager
from pathlib import Path

import src.reproduce as package
from src.lock import pipeline_lock
from src.paths import REPO
from src.reproduce import profile
from src.reproduce.record import read_record, run_stage
from src.reproduce.stages import Pipeline
from src.runs import write_pipeline


def main(argv=None) -> None:
    """Parse the command line, take <out>/.lock and run the profile's stages in order, recording each attempt."""
    args = parse_args(argv)
    chosen = profile.load_profile(args.profile) | {"name": args.profile}
    if args.seeds:
        chosen["seeds"] = args.seeds
    out = Path(args.out or REPO / "outputs" / "reproduce" / args.profile)
    with pipeline_lock(out), sigterm_interrupts():
        record = read_record(out) | {
            "profile": args.profile,
            "seeds": chosen["seeds"],
            "data_note": args.data_note,
        }
        pipeline = Pipeline(chosen, out, args.launcher, args.extra)
        for stage in chosen["stages"]:
            if stage == "report":
                write_pipeline(out, record)
            run_stage(pipeline, stage, record, out)


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
        prog="python -m src.reproduce",
        description=package.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--profile", default="smoke", help="conf_tools/pipeline/<profile>.yaml: " + ", ".join(profile.names())
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
