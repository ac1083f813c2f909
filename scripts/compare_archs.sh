#!/usr/bin/env bash
# GNMT against the Transformer at equal CPU budget on the shipped corpus (BENCHMARKS.md, "Two
# architectures"): both train at the same time, one thread each, for the demo's budget
# (train=demo: 9.5 minutes, decayed over them), then beam-5 BLEU of the first 1,000 test
# sentences, then the BLEU-vs-minutes plot and table (docs/results/architectures/<machine>/bleu_minutes.{json,png}).
#   bash scripts/compare_archs.sh [OUT=runs/archs]
# The simulated pipeline speedup of the two: python -m scripts.bench compare_archs_sim.
set -euo pipefail
OUT=${1:-runs/archs}
COMMON="train=demo train.threads=1 data.batch_tokens=2048 data.max_dev_sentences=300
 train.eval_every=100"
# shellcheck disable=SC2086
{
nmt-train model=transformer_small $COMMON train.lr=2e-3 train.warmup_steps=100 \
  hydra.run.dir="$OUT/transformer_small" &
t=$!
nmt-train model=gnmt_demo $COMMON hydra.run.dir="$OUT/gnmt_demo" &
g=$!
wait "$t"
wait "$g"
for run in "$OUT/transformer_small" "$OUT/gnmt_demo"; do
  nmt-eval checkpoint="$run/checkpoints/best.pt" split=test decode=beam5 limit=1000 \
    hydra.run.dir="$run/eval_log"
done
}
python -m scripts.bench sweep --label-by-folder "$OUT"/*/ \
  --json docs/results/architectures/epyc/bleu_minutes.json \
  --png docs/results/architectures/epyc/bleu_minutes.png
