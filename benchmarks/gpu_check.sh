#!/usr/bin/env bash
# The one prepared GPU check (parity, speed, a short fine-tune), for a session that has a GPU (≤ 10 minutes on one H100-class GPU):
#   1. CPU vs GPU parity of one train step per model × STE       (bench_train.py --sections parity)
#   2. step-time ratios, memory, framework vs bare epoch (data on the device), 1/2/4/8 concurrent ResNet-20 runs,
#      (the stacked table is part 2b)
#  2b. stacked throughput: K = 1/2/4/8 runs of ResNet-20 and of LeNet-5 as one stacked model (src/stack.py) against
#      the K one by one, and a 6-job LeNet-5 sweep through hydra/launcher=stacked (data on the host, and with
#      data.on_device) vs one by one vs joblib (docs/stacked.md). CUDA-graph steps vs eager are NOT measured: no
#      CUDA-graph knob is built yet.
#   3. epoch time per model through src.train with the data on the GPU (metrics.csv time/epoch_s, epochs 2-3)
#   4. a short ResNet-20 2-bit fine-tune per paper STE from a brief FP warm-up (make reproduce PROFILE=gpu_check)
# Usage: OUT=<dir> PY=<python> EXTRA="<src.train overrides>" benchmarks/gpu_check.sh   (CIFAR-10 in $STE_LAB_DATA
# or data/; a JPEG rebuild needs EXTRA="data.verify_checksums=false"). Each part has its own timeout and log.
set -uo pipefail
OUT=${OUT:-outputs/gpu_check}
PY=${PY:-.venv/bin/python}
TRAINER=${TRAINER:-gpu}  # TRAINER=cpu EPOCH_ARGS="trainer.limit_train_batches=2" checks the script itself on a CPU
EXTRA=${EXTRA:-}
EPOCH_ARGS=${EPOCH_ARGS:-}
mkdir -p "$OUT"
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "no nvidia-smi") > "$OUT/gpu.txt" 2>&1
timeout 150 "$PY" benchmarks/bench_train.py --sections parity > "$OUT/parity.txt" 2>&1
timeout 240 "$PY" benchmarks/bench_train.py --sections step,memory,epoch,concurrency --seconds 8 > "$OUT/bench.txt" 2>&1
timeout 200 "$PY" benchmarks/bench_train.py --sections stacked --stack-models resnet20,lenet5 --stack 1,2,4,8 \
    --sweep-steps 200 --sweep-extra "$(echo $EXTRA | tr ' ' ,)" > "$OUT/stacked.txt" 2>&1
for exp in lenet5_mnist vgg11_cifar10 resnet20_cifar10; do
    timeout 150 "$PY" -m src.train experiment=$exp trainer=$TRAINER data.on_device=true trainer.max_epochs=3 \
        logger=csv trainer.enable_progress_bar=false hydra.run.dir="$OUT/epoch/$exp" $EXTRA $EPOCH_ARGS \
        > "$OUT/epoch_$exp.log" 2>&1
done
"$PY" - "$OUT" > "$OUT/epochs.txt" <<'PYEOF'
import sys, pathlib, pandas as pd
for run in sorted(pathlib.Path(sys.argv[1], "epoch").glob("*/metrics.csv")):
    times = pd.read_csv(run)["time/epoch_s"].dropna()
    print(f"{run.parent.name:<20} epoch s: {' '.join(f'{t:.2f}' for t in times)}  (min {times.min():.2f})")
PYEOF
timeout 420 "$PY" -m src.reproduce --profile gpu_check --out "$OUT/reproduce" $EXTRA > "$OUT/reproduce.log" 2>&1
tail -n +1 "$OUT"/gpu.txt "$OUT"/parity.txt "$OUT"/bench.txt "$OUT"/stacked.txt "$OUT"/epochs.txt
grep -m 3 -E "^\| (Dataset|CIFAR10 \| ResNet20 \| 2)" "$OUT/reproduce/report/report.md"  # Table 1a's row
