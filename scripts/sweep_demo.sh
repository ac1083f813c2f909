#!/usr/bin/env bash
# The demo sweep (BENCHMARKS.md, "The demo recipe"): Hydra multiruns through nmt-train itself,
# one factor at a time around a centre recipe (2+2 x 256, 8k vocabulary, 2,048-token batches,
# lr 5e-3, dropout 0.2, output bias at the unigram prior), each job MINUTES of training on
# THREADS threads. Then collect: python -m scripts.bench sweep --label-by-folder OUT/*/
# (JSON + plot + table).
#   bash scripts/sweep_demo.sh [OUT=runs/sweep] [MINUTES=6] [THREADS=1]
set -euo pipefail
OUT=${1:-runs/sweep}
MINUTES=${2:-6}
THREADS=${3:-1}
COMMON="train=demo train.max_minutes=$MINUTES train.threads=$THREADS train.eval_every=100
 data.max_dev_sentences=200 model=gnmt_small data.batch_tokens=2048"
CENTRE="model.enc_layers=2 model.dec_layers=2 train.warmup_steps=50 model.dropout=0.2"
# shellcheck disable=SC2086
{
nmt-train -m $COMMON $CENTRE train.lr=5e-3,1e-2,2e-3 hydra.sweep.dir="$OUT/lr"
nmt-train -m $COMMON $CENTRE train.lr=5e-3 model.hidden=128 hydra.sweep.dir="$OUT/hidden128"
nmt-train -m $COMMON $CENTRE train.lr=5e-3 data.batch_tokens=1024 hydra.sweep.dir="$OUT/batch1k"
nmt-train -m $COMMON $CENTRE train.lr=5e-3 data.vocab_size=4000 hydra.sweep.dir="$OUT/vocab4k"
nmt-train -m $COMMON $CENTRE train.lr=5e-3 model.enc_layers=3 model.dec_layers=3 \
  hydra.sweep.dir="$OUT/depth3"
nmt-train -m $COMMON $CENTRE train.lr=5e-3 model.dropout=0.1 hydra.sweep.dir="$OUT/dropout01"
# the old default: NVIDIA's init (uniform output bias), 4+4 layers, lr 2e-3
nmt-train -m $COMMON model.output_bias=uniform train.lr=2e-3 train.warmup_steps=100 \
  hydra.sweep.dir="$OUT/old_default"
}
