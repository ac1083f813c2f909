"""Benchmarks (``scripts.bench``: ``python -m scripts.bench --list``) and the summary that ends
``make demo`` (``scripts.demo_summary``); run from the repository root, never imported by
``data/``, ``parallel/`` or ``nmt/``."""
