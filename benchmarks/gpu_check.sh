#!/usr/bin/env bash
# One GPU check, under 8 minutes on one H100: prints what it measured and writes it to $OUT_DIR (default
# benchmarks/results/gpu_<name>/). Steps:
#   1. the CUDA-marked notebook cells (nbdev-test --flags gpu when nbdev is installed, else the same checks in Python);
#   2. loss speed at C=8142 on CUDA (every loss vs F.cross_entropy);
#   3. ResNet-32 training throughput on CIFAR-shaped inputs with bf16 autocast + channels_last + torch.compile;
#   4. a full `paper`-profile fmnist_lt run at IF 100 (ResNet-32, 200 epochs) with its wall time;
#   5. what the paper costs (benchmarks/paper_cost.py): `paper`-profile training steps of every dataset of Tables 1-3 on
#      full-size files in the real formats, projected to the GPU-hours of each table, in what is left of the window
#      (WINDOW_S, default 480 s, less 30 s; skipped under 60 s). Alone: --skip cells,loss,throughput,paper.
# Usage: benchmarks/gpu_check.sh [--dry-run] [--skip STEP[,STEP]] [--loss NAME] [--out DIR]
#   --dry-run    print the plan and check the environment, run nothing (works without a GPU)
#   --skip       steps to leave out: cells,loss,throughput,paper,cost
#   --loss       loss of the paper-profile run (default ours)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
DRY=0; SKIP=""; LOSS=ours; OUT_DIR=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --skip) SKIP="${2:?--skip needs a comma-separated list of steps}"; shift ;;
    --loss) LOSS="${2:?--loss needs a loss name}"; shift ;;
    --out) OUT_DIR="${2:?--out needs a folder}"; shift ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac; shift
done
for s in ${SKIP//,/ }; do case "$s" in cells|loss|throughput|paper|cost) ;; *) echo "gpu_check.sh: unknown step '$s' in --skip; steps: cells,loss,throughput,paper,cost" >&2; exit 2 ;; esac; done
skip() { [[ ",$SKIP," == *",$1,"* ]]; }
"$PY" -c "import ltpaper.losses as l, sys; sys.exit(0 if '$LOSS' in l.LOSSES else 3)" || { echo "gpu_check.sh: unknown loss '$LOSS'" >&2; exit 2; }
GPU=$("$PY" -c "import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else '')")
OUT_DIR=${OUT_DIR:-benchmarks/results/gpu_${GPU// /_}}
echo "plan: cells=$(skip cells && echo skip || echo run) loss=$(skip loss && echo skip || echo run) throughput=$(skip throughput && echo skip || echo run) paper=$(skip paper && echo skip || echo run) cost=$(skip cost && echo skip || echo run) loss-of-paper-run=$LOSS out=$OUT_DIR"
if [ "$DRY" = 1 ]; then echo "dry run: nothing executed (GPU: ${GPU:-none})"; exit 0; fi
[ -n "$GPU" ] || { echo "gpu_check.sh: no CUDA device visible; run it on a GPU machine (or --dry-run)" >&2; exit 3; }
mkdir -p "$OUT_DIR"; export PYTHONUNBUFFERED=1
t0=$(date +%s)
if ! skip cells; then
  echo "== 1. CUDA-marked notebook cells"
  if command -v nbdev-test >/dev/null; then nbdev-test --flags gpu nbs/losses/00_losses.ipynb 2>&1 | tee "$OUT_DIR/cells.log"
  else "$PY" benchmarks/gpu_cells.py 2>&1 | tee "$OUT_DIR/cells.log"; fi
fi
if ! skip loss; then
  echo "== 2. loss speed at C=8142 on CUDA"
  "$PY" benchmarks/loss_speed.py --device cuda --classes 1000,8142 --repeats 50 --out "$OUT_DIR/loss_speed.json" 2>&1 | tee "$OUT_DIR/loss_speed.log"
fi
if ! skip throughput; then
  echo "== 3. ResNet-32 throughput, bf16 autocast + channels_last + torch.compile"
  "$PY" benchmarks/train_speed.py --device cuda --out "$OUT_DIR/train_speed.json" 2>&1 | tee "$OUT_DIR/train_speed.log"
fi
if ! skip paper; then
  echo "== 4. paper-profile fmnist_lt IF 100 ($LOSS): ResNet-32, 200 epochs"
  t=$(date +%s)
  "$PY" -m ltpaper.cli train --dataset fmnist_lt --imbalance-factor 100 --loss "$LOSS" --model resnet32 --epochs 200 \
      --batch-size 128 --lr 0.1 --weight-decay 2e-4 --warmup-epochs 5 --milestones 160,180 --lr-decay 0.01,0.0001 \
      --grad-clip 2.0 --device cuda --amp --channels-last --compile --out-dir "$OUT_DIR/paper_fmnist_if100_$LOSS" 2>&1 | tail -n 30 | tee "$OUT_DIR/paper_run.log"
  echo "paper-profile run wall time: $(( $(date +%s) - t )) s" | tee -a "$OUT_DIR/paper_run.log"
fi
if ! skip cost; then
  echo "== 5. what the paper costs: paper-profile steps on full-size files, projected to GPU-hours (benchmarks/paper_cost.py)"
  left=$(( ${WINDOW_S:-480} - ($(date +%s) - t0) - 30 ))
  if [ "$left" -lt 60 ]; then echo "skipped: $left s left in the window (WINDOW_S=${WINDOW_S:-480})" | tee "$OUT_DIR/paper_cost.log"
  else "$PY" benchmarks/paper_cost.py --device cuda --deadline-s "$left" --out "$OUT_DIR/paper_cost" 2>&1 | tee "$OUT_DIR/paper_cost.log"; fi
fi
echo "gpu_check.sh finished in $(( $(date +%s) - t0 )) s on $GPU; outputs in $OUT_DIR"
