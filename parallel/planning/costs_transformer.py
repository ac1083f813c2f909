"""Analytic cost table of the pre-norm Transformer encoder-decoder (the GNMT one is in
:mod:`parallel.planning.costs`; same :class:`CostTable` format, same roofline time model).

Stages: ``Embed+Enc1`` (source and target embeddings, shared; encoder layer 1), ``Enc2`` ..
``EncN`` (one encoder layer each), ``Dec1`` .. ``DecM`` (one decoder layer each: causal
self-attention, cross-attention, FFN), ``Generator`` (Linear H->V, weight tied to the
embedding).  The final encoder LayerNorm sits in the last encoder stage, the final decoder
LayerNorm in the last decoder stage (pre-norm).  Positions are sinusoidal (no parameters).

Stage boundaries (what ``out_bytes_per_mb`` counts): encoder stages send ``h[Ts,B,H]``,
``emb_tgt[Tt,B,H]`` and ``src_len[B]`` (int64); decoder stages send ``x[Tt,B,H]``,
``enc_out[Ts,B,H]`` and ``src_len``; the last decoder stage sends ``x`` and ``enc_out``.
"""

from __future__ import annotations

from parallel.errors import PlacementError
from parallel.planning.costs import DTYPE_BYTES, CostTable, _Work, work_cost

# Forward kernel launches of one layer in eager PyTorch (bias fused into the GEMMs, fused
# scaled-dot-product attention).  A layer is parallel over time: the count does not grow with
# the sequence length (an LSTM layer launches ~2 kernels per time step).
SELF_ATTN_LAUNCHES = 6  # LayerNorm, QKV projection, attention, out projection, dropout, add
CROSS_ATTN_LAUNCHES = 7  # LayerNorm, Q and KV projections, attention, out proj., dropout, add
FFN_LAUNCHES = 7  # LayerNorm, linear 1, activation, dropout, linear 2, dropout, add
ENC_LAYER_LAUNCHES = SELF_ATTN_LAUNCHES + FFN_LAUNCHES  # 13
DEC_LAYER_LAUNCHES = SELF_ATTN_LAUNCHES + CROSS_ATTN_LAUNCHES + FFN_LAUNCHES  # 20
EMBED_LAUNCHES = 6  # source and target: lookup, scale, add positions each
FINAL_NORM_LAUNCHES = 1
GENERATOR_LAUNCHES = 3  # the GNMT generator's count (same stage)


def attention_params(hidden: int) -> int:
    """q, k, v, out projections; biases on all but k (a key bias only shifts every score of a
    query by the same amount, which softmax ignores)."""
    return 4 * hidden * hidden + 3 * hidden


def encoder_layer_params(hidden: int, ffn: int) -> int:
    """One pre-norm encoder layer: self-attention, two FFN linears, two LayerNorms
    (``torch.nn.TransformerEncoderLayer`` less its key bias)."""
    h = hidden
    return attention_params(h) + (2 * h * ffn + ffn + h) + 2 * (2 * h)


def decoder_layer_params(hidden: int, ffn: int) -> int:
    """``torch.nn.TransformerDecoderLayer(hidden, heads, ffn)``: an encoder layer plus the
    cross-attention and its LayerNorm."""
    h = hidden
    return encoder_layer_params(h, ffn) + attention_params(h) + 2 * h


def _enc_layer(h: int, heads: int, ffn: int, ts: int, ns: int) -> tuple[float, int]:
    """Forward FLOPs and saved activation elements of one encoder layer."""
    flops = ns * (4 * 2 * h * h + 2 * 2 * ts * h + 2 * 2 * h * ffn)
    # attention block: LN in/out, q/k/v, context, log-sum-exp per head; FFN: LN in/out,
    # linear-1 output and activation output
    act = ns * ((6 * h + heads) + (2 * h + 2 * ffn))
    return flops, act


def _dec_layer(
    h: int, heads: int, ffn: int, ts: int, tt: int, ns: int, nt: int
) -> tuple[float, int]:
    """Forward FLOPs and saved activation elements of one decoder layer."""
    self_attn = nt * (4 * 2 * h * h + 2 * 2 * tt * h)  # full Tt x Tt scores (masked, not skipped)
    cross = nt * (2 * 2 * h * h + 2 * 2 * ts * h) + ns * 2 * 2 * h * h  # q/o on Tt, k/v on Ts
    flops = self_attn + cross + nt * 2 * 2 * h * ffn
    act = nt * ((6 * h + heads) + (4 * h + heads) + (2 * h + 2 * ffn)) + ns * 2 * h
    return flops, act


def _transformer_work(
    enc_layers: int,
    dec_layers: int,
    hidden: int,
    heads: int,
    ffn: int,
    vocab: int,
    ts: int,
    tt: int,
    b: int,
) -> list[_Work]:
    """Per-stage forward work of the Transformer stage list for one micro-batch of ``b``."""
    h, v = hidden, vocab
    ns, nt = ts * b, tt * b
    lens = 8 * b  # int64 src_len
    enc_params = encoder_layer_params(h, ffn)
    dec_params = decoder_layer_params(h, ffn)
    enc_out = ns * h + nt * h  # h + emb_tgt
    work: list[_Work] = []
    for i in range(1, enc_layers + 1):
        flops, act = _enc_layer(h, heads, ffn, ts, ns)
        launches, params = ENC_LAYER_LAUNCHES, enc_params
        keep = ns * h + nt * h  # the stage input (h, emb_tgt)
        if i == enc_layers:  # the final encoder LayerNorm
            launches, params, act = launches + FINAL_NORM_LAUNCHES, params + 2 * h, act + ns * h
        if i == 1:
            launches += EMBED_LAUNCHES
            params += v * h
            act += nt * h  # emb_tgt, carried to the decoder
            keep = 3 * b * max(ts, tt)  # token ids and lengths (as _gnmt_work)
        name = "Embed+Enc1" if i == 1 else f"Enc{i}"
        work.append(_Work(name, flops, launches, params, act, keep, enc_out, lens))
    for i in range(1, dec_layers + 1):
        flops, act = _dec_layer(h, heads, ffn, ts, tt, ns, nt)
        launches, params, extra = DEC_LAYER_LAUNCHES, dec_params, lens
        if i == dec_layers:  # the final decoder LayerNorm; src_len is not sent on
            launches, params, act = launches + FINAL_NORM_LAUNCHES, params + 2 * h, act + nt * h
            extra = 0
        keep = nt * h + ns * h  # x (emb_tgt for Dec1), enc_out
        work.append(_Work(f"Dec{i}", flops, launches, params, act, keep, nt * h + ns * h, extra))
    work.append(
        _Work(
            "Generator", (2 * h * v + 5 * v) * nt, GENERATOR_LAUNCHES, h * v + v,
            nt * (h + 2 * v), nt * h + ns * h, 0,
        )
    )  # fmt: skip
    return work


def transformer_stage_names(enc_layers: int, dec_layers: int) -> list[str]:
    return (
        ["Embed+Enc1"]
        + [f"Enc{i}" for i in range(2, enc_layers + 1)]
        + [f"Dec{i}" for i in range(1, dec_layers + 1)]
        + ["Generator"]
    )


def analytic_transformer_costs(
    enc_layers: int,
    dec_layers: int,
    hidden: int,
    heads: int,
    ffn: int,
    vocab: int,
    src_len: int,
    tgt_len: int,
    batch: int,
    micro_batch: int,
    flops_per_s: float,
    launch_s: float = 0.0,
    dtype: str = "float32",
    device: str = "analytic",
) -> CostTable:
    """An analytic cost table for a pre-norm Transformer (``enc_layers + dec_layers + 1``
    stages), on the time model of :func:`parallel.planning.costs.analytic_gnmt_costs`.

    Forward time = max(FLOPs / ``flops_per_s``, launches * ``launch_s``); a layer's launches
    are a constant (``ENC_LAYER_LAUNCHES``, ``DEC_LAYER_LAUNCHES``), independent of the
    sequence length; backward is 2x both.  FLOPs per token: attention projections 4*2*H*H
    (self), 2*2*H*H on target tokens + 2*2*H*H on source tokens (cross), scores and context
    2*2*T*H per query token (T the attended length; the causal mask is not exploited), FFN
    2*2*H*ffn, generator 2*H*V (+5*V for the softmax and loss, as GNMT's).  Parameters,
    gradients fp32; Adam state 2x parameters; activations in ``dtype`` (fused attention:
    no T x T probabilities saved).
    """
    if dtype not in DTYPE_BYTES:
        raise PlacementError(f"unknown dtype {dtype!r}; choose from {sorted(DTYPE_BYTES)}")
    sizes = {
        "enc_layers": enc_layers, "dec_layers": dec_layers, "hidden": hidden, "heads": heads,
        "ffn": ffn, "vocab": vocab, "src_len": src_len, "tgt_len": tgt_len, "batch": batch,
        "micro_batch": micro_batch,
    }  # fmt: skip
    if min(sizes.values()) < 1 or not flops_per_s > 0 or not launch_s >= 0:
        shown = " ".join(f"{k}={v}" for k, v in sizes.items())
        raise PlacementError(
            f"analytic transformer costs need positive sizes: {shown} "
            f"flops_per_s={flops_per_s} launch_s={launch_s}",
            **sizes,
            flops_per_s=flops_per_s,
            launch_s=launch_s,
        )
    if hidden % heads:
        raise PlacementError(
            f"hidden={hidden} is not divisible by heads={heads}", hidden=hidden, heads=heads
        )
    ab = DTYPE_BYTES[dtype]
    work = _transformer_work(
        enc_layers, dec_layers, hidden, heads, ffn, vocab, src_len, tgt_len, micro_batch
    )
    # the residual stream stays fp32 under autocast (x + bf16 branch = fp32), so what crosses a
    # boundary is fp32 whatever ``dtype`` the matmuls use
    stages = [work_cost(w, flops_per_s, launch_s, ab, 4) for w in work]
    return CostTable(
        model=f"transformer{enc_layers}x{dec_layers}",
        device=device,
        dtype=dtype,
        src_len=src_len,
        tgt_len=tgt_len,
        micro_batch=micro_batch,
        batch=batch,
        stages=tuple(stages),
        tied_param_bytes=4 * hidden * vocab,
        source="analytic",
        notes=f"hidden={hidden} heads={heads} ffn={ffn} vocab={vocab} "
        f"flops_per_s={flops_per_s:.3g} launch_s={launch_s:.3g}",
    )
