"""``nmt-translate``: checkpoint + input -> output. Plain text line by line
(:mod:`nmt.decode.translate`, optionally sharded over CPU processes) or a gettext catalogue
(:mod:`nmt.decode.po_files`)."""

from __future__ import annotations

import os
import sys
from typing import Any

import torch

from nmt.config import AppConfig, DecodeConfig, config_to_dict
from nmt.decode.inference import (
    ARITHMETIC,
    decode_candidates,
    load_for_decoding,
    load_for_inference,
)
from nmt.decode.line_files import (
    check_input,
    check_output,
    count_lines,
    input_chunks,
    open_input,
    open_output,
)
from nmt.decode.po_files import is_catalogue, translate_catalogue_cli
from nmt.decode.translate import (
    check_decode,
    one_line,
    source_prefix,
    translate_masked,
    translate_stream,
)
from nmt.errors import UserError
from nmt.machine import hostmem
from nmt.machine.calibrate import announce


def _translate_shard(
    checkpoint: str, arithmetic: str, dcfg: dict[str, Any], lines: list[str], threads: int
) -> list[str]:
    """Worker of ``parallel.nproc > 1``: translate this rank's contiguous share of ``lines``."""
    hostmem.tune()  # a spawned process starts with glibc's defaults
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if threads:
        torch.set_num_threads(threads)
    start, stop = rank * len(lines) // world, (rank + 1) * len(lines) // world
    dtype, quantize = ARITHMETIC[arithmetic]
    model, tok = load_for_inference(checkpoint, quantize, "cpu", dtype)
    hyps = translate_masked(model, tok, lines[start:stop], DecodeConfig(**dcfg))
    if dcfg["nbest"] > 1:
        return [
            f"{start + i + 1}\t{r}\t{score:.4f}\t{one_line(text, tsv=True)}"
            for i, h in enumerate(hyps)
            for r, (text, score, _) in enumerate(h, start=1)
        ]
    return [one_line(h[0][0]) for h in hyps]


def translate_sharded(cfg: AppConfig, nproc: int, arithmetic: str) -> int:
    """Shard the input lines over ``nproc`` processes, each decoding in ``arithmetic`` (one of
    :data:`nmt.decode.inference.ARITHMETIC`); write the outputs in input order."""
    from parallel.runtime.engine import launch

    with open_input(str(cfg.input)) as src:
        lines = [
            x
            for chunk in input_chunks(src, str(cfg.input), str(cfg.data.on_bad_utf8))
            for x in chunk
        ]
    dcfg = config_to_dict(cfg.decode)
    threads = _threads(cfg, nproc)
    results = launch(
        _translate_shard,
        str(cfg.checkpoint),
        arithmetic,
        dcfg,
        lines,
        threads,
        nproc=nproc,
        timeout_s=float(cfg.parallel.timeout_s),
    )
    with open_output(str(cfg.output), str(cfg.input)) as out:
        if cfg.decode.nbest > 1:
            out.write("line\trank\tscore\thypothesis\n")
        for rank in sorted(results):
            out.writelines(x + "\n" for x in results[rank])
    return len(lines)


def _threads(cfg: AppConfig, nproc: int) -> int:
    """Threads per decoding process: ``train.threads``, else the cores shared out."""
    if int(cfg.train.threads):
        return int(cfg.train.threads)
    return torch.get_num_threads() if nproc == 1 else max(1, (os.cpu_count() or 1) // nproc)


def translate_cli(cfg: AppConfig) -> dict[str, Any]:
    """``nmt-translate``: checkpoint + input -> output (one line per input line)."""
    if not cfg.checkpoint:
        raise UserError("checkpoint=PATH is required (a checkpoint file or a shipped model name)")
    check_decode(cfg.decode)
    device, _ = decode_candidates(cfg.decode)
    nproc = int(cfg.parallel.nproc)
    if nproc > 1 and device != "cpu":
        raise UserError(
            f"parallel.nproc={nproc} shards the input over CPU processes; with "
            f"decode.device={device} use parallel.nproc=1 (or decode.device=cpu)"
        )
    if str(cfg.input) != "-":  # bad paths fail before the model loads and is calibrated
        check_input(str(cfg.input))
    if str(cfg.output) != "-":
        check_output(str(cfg.output), str(cfg.input))
    torch.set_num_threads(_threads(cfg, nproc))  # what each process runs with, calibrated so
    if is_catalogue(cfg):  # .po / .pot: nmt/decode/po_files.py
        return translate_catalogue_cli(cfg)
    model, tok, arith = load_for_decoding(str(cfg.checkpoint), cfg.decode)
    source_prefix(tok, str(cfg.decode.target_lang))  # fail before reading any input
    if nproc > 1:
        n = translate_sharded(cfg, nproc, arith.name)
        announce(arith.choice)  # once all went well: a user error stays one line
        print(f"nmt-translate: {n} lines over {nproc} processes -> {cfg.output}", file=sys.stderr)
        return {"lines": n}
    with open_input(str(cfg.input)) as src, open_output(str(cfg.output), str(cfg.input)) as out:
        n = translate_stream(
            model,
            tok,
            src,
            str(cfg.input),
            out,
            cfg.decode,
            str(cfg.data.on_bad_utf8),
            count_lines(str(cfg.input)),
        )
    announce(arith.choice)  # once all went well: a user error (bad UTF-8, ...) stays one line
    if cfg.output != "-":
        print(f"nmt-translate: {n} lines -> {cfg.output}", file=sys.stderr)
    return {"lines": n}
