"""The paper's protocol end to end: ``python -m src.reproduce --profile <conf_tools/pipeline name>`` (``make reproduce``).

Stages, in order (Yin et al. 2019, §4): full-precision pretraining → Table 1 sweeps (STE × bits × seed, each from its
FP checkpoint) → optionally the coarse gradients at those minima (src.gradients) → Figure 2 (identity STE from the
4-bit relu / clipped_relu minima) → Figure 4 (relu STE from the 2-bit clipped_relu minimum) → the two-layer model
(theory figures, certificate, training per STE) → report.
Runs land in <out>/<stage>/<run_name>/; a run whose summary.json says finished or diverged is skipped, so re-running
after an interruption continues: an unfinished or failed run is launched again into its own dir, where src.train
resumes it from checkpoints/last.ckpt. One pipeline per out dir (<out>/.lock); stopping the pipeline (SIGTERM,
Ctrl-C, even SIGKILL) stops its training processes too. <out>/pipeline.json keeps every attempt of every stage.

Modules, each importing only those before it: ``profile`` (conf_tools/pipeline/*.yaml), ``supervise`` (one supervised
child process per multirun; standard library only, run as ``python -m src.reproduce.supervise``), ``jobs`` (which
runs are done, sweep packing, launching multiruns), ``stages`` (``Pipeline``), ``record`` (pipeline.json's attempts),
``cli`` (arguments, lock, signals). This file imports none of them, so ``python -m src.reproduce.supervise`` stays light.
"""
