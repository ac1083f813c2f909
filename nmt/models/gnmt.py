"""GNMT (NVIDIA GNMT v2 variant) as a list of pipeline stages, plus incremental decoding.

Stages (docs/DESIGN.md, Stage boundary contract):
``[Embed+Enc1, Enc2, ..., EncN, Dec1+Attention, Dec2, ..., DecM, Generator]``.
The single-device model runs them in order; :class:`GNMT` also exposes an incremental decoding
API (``encode`` / ``init_state`` / ``decode_step`` / ``reorder_state``) over the same modules.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from nmt.models.attention import AttentionMemory, BahdanauAttention
from nmt.models.gnmt_layers import (
    AttentionDecoder1,
    DecoderLayer,
    EmbedEncoder1,
    EncoderLayer,
    Generator,
)
from nmt.models.seq2seq import Arch, ModelSpec, Seq2Seq, log_unigram_prior, quantize_int8
from parallel.planning.costs import CostTable, analytic_gnmt_costs

__all__ = [
    "ARCH",
    "GNMT",
    "AttentionMemory",
    "DecoderState",
    "build_stages",
    "log_unigram_prior",
    "quantize_int8",
]


class DecoderState(NamedTuple):
    """LSTM state of all decoder layers: ``h[L,B,H]``, ``c[L,B,H]`` (L = decoder layers)."""

    h: Tensor
    c: Tensor


def build_stages(
    vocab_size: int,
    hidden: int,
    enc_layers: int,
    dec_layers: int,
    dropout: float,
    tie_embeddings: bool,
    init_range: float,
    pad_id: int,
    output_prior: Tensor | None = None,
) -> list[nn.Module]:
    """Build the ``enc_layers + dec_layers + 1`` stages, initialised U(-init_range, init_range).

    Exceptions to the uniform init (as NVIDIA's BahdanauAttention): the attention's
    normalization scalar g = 1/sqrt(H) and bias b = 0. With ``output_prior`` (``[V]``
    log-probabilities, see :func:`log_unigram_prior`) the generator's bias starts there, so the
    untrained model already predicts the unigram distribution (docs/DESIGN.md, "Why the output
    bias starts at the prior"). With ``tie_embeddings`` the generator's weight *is* the
    embedding Parameter (one shared object). Seeded by the caller's ``torch.manual_seed``.
    """
    if enc_layers < 2:
        raise ValueError(f"enc_layers must be >= 2 (bi-LSTM + 2H->H layer), got {enc_layers}")
    if dec_layers < 1:
        raise ValueError(f"dec_layers must be >= 1, got {dec_layers}")
    stages: list[nn.Module] = [EmbedEncoder1(vocab_size, hidden, dropout, pad_id)]
    stages.append(EncoderLayer(2, 2 * hidden, hidden, dropout))
    stages += [EncoderLayer(i, hidden, hidden, dropout) for i in range(3, enc_layers + 1)]
    stages.append(AttentionDecoder1(hidden, dropout))
    stages += [DecoderLayer(i, hidden, dropout) for i in range(2, dec_layers + 1)]
    generator = Generator(hidden, vocab_size)
    stages.append(generator)
    with torch.no_grad():
        for stage in stages:
            for p in stage.parameters():
                p.uniform_(-init_range, init_range)
            for m in stage.modules():
                if isinstance(m, BahdanauAttention):
                    m.reset_normalization()
    embed = stages[0]
    assert isinstance(embed, EmbedEncoder1)
    generator.start(output_prior, embed.embedding if tie_embeddings else None)
    return stages


class GNMT(Seq2Seq):
    """Single-device GNMT over the pipeline stages (same modules and weights)."""

    arch = "gnmt"

    def __init__(self, stages: Sequence[nn.Module]) -> None:
        super().__init__(list(stages))
        kinds = [type(s) for s in stages]
        if kinds[0] is not EmbedEncoder1 or kinds[-1] is not Generator:
            raise ValueError("stages must start with Embed+Enc1 and end with Generator")
        self.n_enc = kinds.index(AttentionDecoder1)
        self.n_dec = len(stages) - 1 - self.n_enc

    # --- stage access (not registered twice: properties, not attributes) ---
    @property
    def embed_stage(self) -> EmbedEncoder1:
        return self.stages[0]  # type: ignore[return-value]

    @property
    def enc_stages(self) -> list[EncoderLayer]:
        return list(self.stages[1 : self.n_enc])  # type: ignore[arg-type]

    @property
    def attn_stage(self) -> AttentionDecoder1:
        return self.stages[self.n_enc]  # type: ignore[return-value]

    @property
    def dec_stages(self) -> list[DecoderLayer]:
        return list(self.stages[self.n_enc + 1 : -1])  # type: ignore[arg-type]

    def input_embedding(self) -> nn.Embedding:
        return self.embed_stage.embedding

    # --- incremental decoding ---
    def encode(self, src: Tensor, src_len: Tensor) -> Tensor:
        """Encoder path: ``src[Ts,B]``, ``src_len[B]`` -> ``enc_out[Ts,B,H]``.

        Dropout is active in train mode; call on a model in eval mode for search.
        """
        h = self.embed_stage.encode(src, src_len)
        for stage in self.enc_stages:
            h = stage.encode(h)
        return h

    def prepare_memory(self, enc_out: Tensor, src_len: Tensor) -> AttentionMemory:
        """Attention keys/values/mask (batch-first) for ``enc_out[Ts,B,H]``, ``src_len[B]``."""
        return self.attn_stage.attention.memory(enc_out, src_len)

    def init_state(self, batch: int) -> DecoderState:
        """Zero decoder state (GNMT v2 does not pass the encoder state): ``[L,batch,H]``."""
        w = self.embed_stage.embedding.weight
        zeros = w.new_zeros(self.n_dec, batch, self.hidden)
        return DecoderState(zeros, zeros.clone())

    def step_logits(
        self,
        y_prev: Tensor,
        state: DecoderState,
        memory: AttentionMemory,
        vocab: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, DecoderState, Tensor]:
        """One step (no dropout) -> unnormalized ``logits[N,V]`` (``[N,S]`` over ``vocab``),
        the new state, ``attn[N,Ts]``."""
        emb = self.embed_stage.embedding(y_prev)  # [N, H]
        hs: list[Tensor] = []
        cs: list[Tensor] = []
        x, ctx, attn, (h, c) = self.attn_stage.step(emb, (state.h[0], state.c[0]), memory)
        hs.append(h)
        cs.append(c)
        for i, stage in enumerate(self.dec_stages, start=1):
            x, (h, c) = stage.step(x, ctx, (state.h[i], state.c[i]))
            hs.append(h)
            cs.append(c)
        logits = self.project(x, ctx, vocab)
        return logits, DecoderState(torch.stack(hs), torch.stack(cs)), attn

    @staticmethod
    def reorder_state(state: DecoderState, index: Tensor) -> DecoderState:
        """Select rows ``index[B']`` (long) of the state: beams survive, move or are dropped."""
        return DecoderState(state.h.index_select(1, index), state.c.index_select(1, index))


# --- the registry entry (nmt/models/registry.py) ---
def stage_names(spec: ModelSpec) -> list[str]:
    """``Embed+Enc1, Enc2.., Dec1+Attention, Dec2.., Generator``."""
    return (["Embed+Enc1"] + [f"Enc{i}" for i in range(2, spec.enc_layers + 1)]
            + ["Dec1+Attention"] + [f"Dec{i}" for i in range(2, spec.dec_layers + 1)]
            + ["Generator"])  # fmt: skip


def problems(spec: ModelSpec) -> list[str]:
    """What makes ``spec`` impossible for GNMT (one phrase each)."""
    return spec.below(hidden=1, enc_layers=2, dec_layers=1)


def stages_from_spec(
    spec: ModelSpec, vocab_size: int, pad_id: int, prior: Tensor | None
) -> list[nn.Module]:
    return build_stages(
        vocab_size, spec.hidden, spec.enc_layers, spec.dec_layers, spec.dropout,
        spec.tie_embeddings, spec.init_range, pad_id, prior,
    )  # fmt: skip


def analytic_costs(spec: ModelSpec, vocab: int, *args: Any, **kw: Any) -> CostTable:
    """:func:`parallel.planning.costs.analytic_gnmt_costs` for ``spec`` (equal encoder and decoder
    depth); ``args``: src_len, tgt_len, batch, micro_batch, flops_per_s[, launch_s]."""
    if spec.enc_layers != spec.dec_layers:
        raise ValueError(
            f"analytic GNMT costs need enc_layers == dec_layers, got "
            f"{spec.enc_layers} and {spec.dec_layers}"
        )
    return analytic_gnmt_costs(spec.enc_layers, spec.hidden, vocab, *args, **kw)


def describe(spec: ModelSpec) -> str:
    return (
        f"A GNMT-style LSTM translation model: a bidirectional first encoder layer, "
        f"{spec.enc_layers} encoder and {spec.dec_layers} decoder LSTM layers, {spec.hidden} "
        f"wide, attention"
    )


ARCH = Arch(GNMT, stages_from_spec, stage_names, problems, describe, analytic_costs)
