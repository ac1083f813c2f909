#!/usr/bin/env bash
# The demo recipe at the demo's own budget (BENCHMARKS.md, "The demo recipe"): each recipe is
# `make demo`'s training command (2 threads, bf16 autocast where native) with the overrides
# given, one after the other on an otherwise idle machine, each scored on the test split with
# beam 5 as `make demo` does. The first two ran before nmt/machine/hostmem.py existed: they run with
# glibc's default allocator (PIPENMT_MALLOC=system) to reproduce them. Collect afterwards:
#   python -m scripts.bench sweep --label-by-name OUT/*/ \
#     --json docs/results/demo/amx/recipes/sweep.json --png docs/results/demo/amx/recipes/sweep.png
#   bash scripts/demo_recipes.sh [OUT=runs/demo_recipes] [PRECISION=bf16]
set -euo pipefail
OUT=${1:-runs/demo_recipes}
PRECISION=${2:-bf16}
COMMON="model=gnmt_demo train=demo train.precision=$PRECISION data.batch_tokens=2048
 data.max_dev_sentences=300"
run() {  # run NAME OVERRIDES...
  local name=$1
  shift
  # shellcheck disable=SC2086
  nmt-train $COMMON "$@" hydra.run.dir="$OUT/$name"
  nmt-eval checkpoint="$OUT/$name/checkpoints/best.pt" split=test decode=beam5
}
# the previous demo recipe: lr 1e-2 (chosen by 6-minute one-thread runs), 9.5 minutes
PIPENMT_MALLOC=system run a_lr1e-2_9.5min model.dropout=0.2 train.lr=1e-2 train.max_minutes=9.5 \
  train.eval_every=250
# the shipped model's learning rate, and the training budget the demo's 15 minutes leave
PIPENMT_MALLOC=system run b_lr5e-3_12min model.dropout=0.2 train.eval_every=400
# b with the allocator settings of nmt/machine/hostmem.py
run c_lr5e-3_12min_hostmem model.dropout=0.2
# c with less dropout, and with none: today's `make demo` (conf/model/gnmt_demo.yaml)
run d_lr5e-3_12min_hostmem_dropout0.1 model.dropout=0.1
run e_lr5e-3_12min_hostmem_dropout0
