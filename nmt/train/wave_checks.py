"""Settings of the wavefront across processes (:mod:`nmt.train.wavefront_ranks`): what it
refuses, and which rank runs which layer."""

from __future__ import annotations

import math

from nmt.config import AppConfig
from nmt.errors import UserError
from nmt.train.build import pick_device
from parallel.runtime.wave import MAX_CHUNKS


def check_wave_ranks(cfg: AppConfig) -> None:
    """What the wavefront across processes refuses (one line each)."""
    pc = cfg.parallel
    refused = [
        (pc.pp < 2, f"parallel.dp={pc.dp} with parallel.time_chunks={pc.time_chunks}: the "
         "wavefront's replicas need parallel.pp >= 2 (the one-process wavefront: dp=1)"),
        (pc.microbatches > 1, f"parallel.microbatches={pc.microbatches}: the wavefront cuts "
         "batches along time (parallel.time_chunks), use microbatches=1"),
        (cfg.train.precision == "fp16", "train.precision=fp16 is not supported across ranks"),
        (cfg.model.arch != "gnmt", f"parallel.time_chunks={pc.time_chunks}: the wavefront "
         f"carries LSTM state from chunk to chunk; it needs model.arch=gnmt"),
        (pc.time_chunks > MAX_CHUNKS, f"parallel.time_chunks must be <= {MAX_CHUNKS}"),
        (not 0.0 <= pc.generator_share < 1.0, "parallel.generator_share must be in [0, 1)"),
        (pc.encoder_shares is not None and (len(pc.encoder_shares) != pc.pp
         or not all(0 <= w < math.inf for w in pc.encoder_shares)
         or sum(pc.encoder_shares) <= 0),
         f"parallel.encoder_shares={pc.encoder_shares}: needs {pc.pp} finite weights >= 0 "
         "(one per rank of the pipeline), not all 0"),
        (pc.wave_threads and pc.dp > 1, f"parallel.wave_threads=true runs one pipeline in one "
         f"process: parallel.dp={pc.dp} needs processes (parallel.wave_threads=false)"),
        (pc.wave_threads and pick_device(cfg.train.device).type != "cpu", "parallel.wave_threads"
         "=true runs on a CPU (train.device=cpu); on a GPU each rank is a process"),
    ]  # fmt: skip
    for bad, line in refused:
        if bad:
            raise UserError(line)
    units = cfg.model.enc_layers + cfg.model.dec_layers + 1
    owners = wave_owners(units, pc.pp, pc.balance)
    dec1 = cfg.model.enc_layers
    if pc.attention_split and (cfg.model.dec_layers < 2 or owners[dec1] == owners[dec1 + 1]):
        raise UserError(
            "parallel.attention_split=true needs Dec2 on another rank than Dec1 "
            f"(parallel.balance: Dec1 last on its rank; ranks of the layers: {owners})"
        )


def wave_owners(units: int, pp: int, balance: list[int] | None) -> list[int]:
    """The rank of each of the model's ``units`` layers (non-decreasing)."""
    if balance is None:
        if units - 1 < pp - 1:
            raise UserError(f"parallel.pp={pp}: more ranks than the model's {units} layers")
        rest, extra = divmod(units - 1, pp - 1)
        balance = [rest + (1 if r < extra else 0) for r in range(pp - 1)] + [1]
    if len(balance) != pp or sum(balance) != units or min(balance) < 1:
        raise UserError(
            f"parallel.balance={balance}: needs {pp} counts >= 1 summing to the model's "
            f"{units} layers"
        )
    return [r for r, n in enumerate(balance) for _ in range(n)]
