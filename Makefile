# pipenmt: the two commands a newcomer needs are `make demo` and `make test`.
DEMO_DIR ?= runs/demo
SHIPPED ?= gnmt-debian-en-de

# Which Python: an active virtual environment ($VIRTUAL_ENV) is used as it is; where the system
# Python refuses `pip install` (PEP 668: an EXTERNALLY-MANAGED file in its stdlib folder, as on
# Debian and Ubuntu), a project environment in .venv/ is created and used; otherwise the current
# python3. Override with `make VENV=.venv ...` (force the project environment) or `make VENV=`.
SYSTEM_PY ?= python3
EXTERNALLY_MANAGED := $(shell $(SYSTEM_PY) -c "import os, sysconfig; print(int(os.path.isfile(os.path.join(sysconfig.get_path('stdlib'), 'EXTERNALLY-MANAGED'))))" 2>/dev/null)
ifeq ($(VIRTUAL_ENV),)
ifeq ($(EXTERNALLY_MANAGED),1)
VENV ?= .venv
endif
endif

ifneq ($(VENV),)
PY := $(VENV)/bin/python
BIN := $(VENV)/bin/
VENV_PY := $(PY)
# The project environment; `python3 -m venv` needs Debian's python3-venv package.
$(VENV_PY):
	$(SYSTEM_PY) -m venv $(VENV) || { echo "make: cannot create $(VENV) (Debian/Ubuntu: apt-get install python3-venv)" >&2; exit 2; }
else
PY ?= $(SYSTEM_PY)
BIN :=
VENV_PY :=
endif
PIP := $(PY) -m pip

.PHONY: install install-browser test test-avx2 test-slow demo lint bench

# torch first: on machines that carry the torch 2.13.0 CPU wheel (pip is pointed at it),
# `pip install torch==2.13.0` takes it; elsewhere the package's own `torch` requirement applies.
install: $(VENV_PY)
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q torch==2.13.0 || $(PIP) install -q torch
	$(PIP) install -q numpy
	$(PIP) install -q -e ".[test,serve]"

# The web UI's test (tests/test_serve_ui.py) drives Debian's chromium through playwright (no
# browser download; without either the test is skipped): apt-get installs chromium where no
# `chromium` is on PATH (as root, else through sudo; on Ubuntu the package is a snap stub:
# give the test a browser with PIPENMT_CHROMIUM=/path/to/chromium), pip the browser extra.
install-browser: install
	@command -v chromium >/dev/null 2>&1 || { \
		SUDO=; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
		command -v apt-get >/dev/null 2>&1 || { echo "make: no chromium and no apt-get" >&2; exit 2; }; \
		$$SUDO apt-get update -qq && \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }
	$(PIP) install -q -e ".[test,serve,browser]"

test: install
	$(PY) -m pytest -q

# The AVX2 class of CPU (no AVX-512, VNNI or AMX: most laptops, AMD before Zen 4) forced on any
# x86-64 CPU, for the tests whose kernels differ by class: precision and its calibration, bf16,
# int8, training and decoding.
AVX2_ENV := ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2
KERNEL_TESTS := tests/test_calibrate.py tests/test_train_trust.py tests/test_train.py \
	tests/test_model.py tests/test_fast_paths.py tests/test_search.py tests/test_pruning.py \
	tests/test_pruned_eos.py tests/test_translate_eval.py tests/test_shipped_model.py
test-avx2: install
	$(AVX2_ENV) $(PY) -m pytest -q $(KERNEL_TESTS)

test-slow: install
	$(PY) -m pytest -q -m slow

lint: install
	$(BIN)ruff check . && $(BIN)ruff format --check . && $(BIN)mypy --strict nmt data parallel

# Train the demo model (2+2 x 256) on the shipped Debian corpus for a bounded CPU budget, then
# translate the test split with beam 5 and print BLEU and chrF; then score the shipped model
# (models/$(SHIPPED)) on the same split and print both results, one line each.
SHIPPED_REPORT := outputs/eval/$(SHIPPED).test.beam5.hyp.eval.json
# train.precision and the decoding arithmetic are auto: measured on this machine at the first
# run (bf16 autocast where it trains faster, int8 or bf16 decoding where they decode faster,
# fp32 otherwise; nmt/machine/calibrate.py), cached in ~/.cache/pipenmt/calibration.json.
demo: install
	$(BIN)nmt-train model=gnmt_demo train=demo data.batch_tokens=2048 data.max_dev_sentences=300 hydra.run.dir=$(DEMO_DIR)
	$(BIN)nmt-eval checkpoint=$(DEMO_DIR)/checkpoints/best.pt split=test decode=beam5
	@rm -f $(SHIPPED_REPORT)
	@if [ -f models/$(SHIPPED)/model.pt ]; then \
		$(BIN)nmt-eval checkpoint=$(SHIPPED) split=test decode=beam5; \
	else echo "models/$(SHIPPED)/model.pt is absent: no shipped model to compare with"; fi
	@$(PY) -m scripts.demo_summary --name $(SHIPPED) --shipped $(SHIPPED_REPORT) \
		--demo $(DEMO_DIR)/checkpoints/best.test.beam5.hyp.eval.json

# Peer comparison against Joey NMT 2.3.0 (RNN) on this machine: same corpus, sentencepiece model,
# token batch, threads and wall-clock budget (BENCH_MINUTES per system; ~30-35 min in all with 8).
# Joey NMT gets its own venv in ~/.cache/pipenmt/peer-venv. Results: docs/results/peer/<class>/.
BENCH_MINUTES ?= 8
bench: install
	$(PY) -m scripts.bench peer --minutes $(BENCH_MINUTES) --out outputs/bench
