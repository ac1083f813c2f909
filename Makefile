# pipenmt: the two commands a newcomer needs are `make demo` and `make test`.
PY ?= python3
PIP := $(PY) -m pip
DEMO_DIR ?= runs/demo

.PHONY: install test test-slow demo lint bench

# torch first: on machines that carry the torch 2.13.0 CPU wheel (pip is pointed at it),
# `pip install torch==2.13.0` takes it; elsewhere the package's own `torch` requirement applies.
install:
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q torch==2.13.0 || $(PIP) install -q torch
	$(PIP) install -q numpy
	$(PIP) install -q -e ".[test]"

test: install
	$(PY) -m pytest -q

test-slow: install
	$(PY) -m pytest -q -m slow

lint: install
	ruff check . && ruff format --check . && mypy --strict data parallel

# Train gnmt_small on the shipped Debian corpus for a bounded CPU budget (train=demo), then
# translate the test split with beam 5 and print BLEU and chrF.
demo: install
	nmt-train model=gnmt_small train=demo data.batch_tokens=2048 hydra.run.dir=$(DEMO_DIR)
	nmt-eval checkpoint=$(DEMO_DIR)/checkpoints/best.pt split=test decode=beam5

# Peer comparison against Joey NMT 2.3.0 (RNN) on this machine: same corpus, sentencepiece model,
# token batch, threads and wall-clock budget (BENCH_MINUTES per system; ~30-35 min in all with 8).
# Joey NMT gets its own venv in ~/.cache/pipenmt/peer-venv. Results: outputs/bench/.
BENCH_MINUTES ?= 8
bench: install
	$(PY) scripts/bench_peer.py --minutes $(BENCH_MINUTES) --out outputs/bench
