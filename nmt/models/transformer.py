"""A pre-norm Transformer encoder-decoder as pipeline stages, plus incremental decoding.

Stages (docs/DESIGN.md, Stage boundary contract; layers in :mod:`nmt.models.transformer_layers`):
``[Embed+Enc1, Enc2, ..., EncN, Dec1, ..., DecM, Generator]``. One embedding table serves
source and target (joint vocabulary), scaled by sqrt(H), plus fixed sinusoidal positions; with
``tie_embeddings`` the generator's weight is that table. :class:`Transformer` runs the stages on
one device (training: the :class:`nmt.models.seq2seq.Seq2Seq` base) and decodes incrementally with
per-layer self-attention caches (:class:`DecoderCache`) and cross-attention keys/values
computed once per source batch (:class:`TransformerMemory`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from nmt.models.gnmt_layers import Generator
from nmt.models.seq2seq import Arch, ModelSpec, Seq2Seq
from nmt.models.transformer_layers import (
    Decoder1,
    DecoderBlock,
    DecoderStage,
    EmbedEncoder1,
    EncoderBlock,
    EncoderStage,
    source_mask,
)
from parallel.planning.costs import CostTable
from parallel.planning.costs_transformer import analytic_transformer_costs

__all__ = [
    "ARCH",
    "DecoderCache",
    "Transformer",
    "TransformerMemory",
    "build_stages",
    "describe",
    "init_weights",
    "problems",
    "stage_names",
    "stages_from_spec",
]


class TransformerMemory(NamedTuple):
    """Cross-attention inputs of every decoder layer, batch-first, computed once per batch.

    keys:   [L, B, heads, Ts, dh]  (L = decoder layers, dh = H / heads)
    values: [L, B, heads, Ts, dh]
    mask:   [B, Ts]  bool, True at padded source positions
    """

    keys: Tensor
    values: Tensor
    mask: Tensor

    def index_select(self, index: Tensor) -> TransformerMemory:
        """Keep sentences ``index[B']`` (long)."""
        return TransformerMemory(
            self.keys.index_select(1, index),
            self.values.index_select(1, index),
            self.mask.index_select(0, index),
        )

    def for_rows(self, rows: Tensor) -> TransformerMemory:
        """For query rows of sentences ``rows[N]``: the rows' copies (``index_select``)."""
        return self.index_select(rows)


class DecoderCache(NamedTuple):
    """Self-attention keys/values of the positions decoded so far, per decoder layer:
    ``keys[L,N,heads,t,dh]``, ``values[L,N,heads,t,dh]``; the next position is t."""

    keys: Tensor
    values: Tensor


def build_stages(
    vocab_size: int,
    hidden: int,
    heads: int,
    ffn: int,
    enc_layers: int,
    dec_layers: int,
    dropout: float,
    tie_embeddings: bool,
    pad_id: int,
    output_prior: Tensor | None = None,
) -> list[nn.Module]:
    """The ``enc_layers + dec_layers + 1`` stages (seeded by the caller's ``torch.manual_seed``).

    Init: xavier-uniform Linear weights, zero biases, embedding N(0, 1/H) (pad row 0),
    LayerNorm 1/0; the generator bias starts at ``output_prior`` (``[V]``) when given. With
    ``tie_embeddings`` the generator's weight *is* the embedding Parameter.
    """
    if hidden % heads:
        raise ValueError(f"hidden={hidden} must be divisible by heads={heads}")
    sizes = (hidden, heads, ffn, dropout)
    stages: list[nn.Module] = [
        EmbedEncoder1(vocab_size, *sizes, pad_id=pad_id, final=enc_layers == 1)
    ]
    stages += [EncoderStage(i, *sizes, final=i == enc_layers) for i in range(2, enc_layers + 1)]
    stages.append(Decoder1(1, *sizes, final=dec_layers == 1))
    stages += [DecoderStage(i, *sizes, final=i == dec_layers) for i in range(2, dec_layers + 1)]
    generator = Generator(hidden, vocab_size)
    stages.append(generator)
    with torch.no_grad():
        for stage in stages:
            init_weights(stage, pad_id)
    embed = stages[0]
    assert isinstance(embed, EmbedEncoder1)
    generator.start(output_prior, embed.embedding if tie_embeddings else None)
    return stages


def init_weights(module: nn.Module, pad_id: int) -> None:
    """Initialise every Linear, Embedding and LayerNorm of ``module`` in place (no grad)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, m.embedding_dim**-0.5)
            m.weight[pad_id].zero_()
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class Transformer(Seq2Seq):
    """Single-device pre-norm Transformer over the pipeline stages (same modules and weights)."""

    arch = "transformer"

    def __init__(self, stages: list[nn.Module]) -> None:
        super().__init__(list(stages))
        if not isinstance(stages[0], EmbedEncoder1):
            raise ValueError("stages must start with Embed+Enc1 and end with Generator")
        self.n_enc = next(i for i, s in enumerate(stages) if isinstance(s, DecoderBlock))

    # --- stage access (properties: the modules are registered once, in ``stages``) ---
    @property
    def embed_stage(self) -> EmbedEncoder1:
        return self.stages[0]  # type: ignore[return-value]

    @property
    def enc_stages(self) -> list[EncoderBlock]:
        """All encoder stages, ``Embed+Enc1`` included."""
        return list(self.stages[: self.n_enc])  # type: ignore[arg-type]

    @property
    def dec_stages(self) -> list[DecoderBlock]:
        return list(self.stages[self.n_enc : -1])  # type: ignore[arg-type]

    def input_embedding(self) -> nn.Embedding:
        return self.embed_stage.embedding

    # --- incremental decoding ---
    def encode(self, src: Tensor, src_len: Tensor) -> Tensor:
        """``src[Ts,B]``, ``src_len[B]`` -> ``enc_out[Ts,B,H]`` (final-normed; anything at
        padded positions). Dropout is active in train mode: call in eval mode for search."""
        h: Tensor = self.embed_stage.dropout(self.embed_stage.embed(src))
        mask = source_mask(src_len, src.size(0), h.device)
        for stage in self.enc_stages:
            h = stage.encode(h, mask)
        return h

    def prepare_memory(self, enc_out: Tensor, src_len: Tensor) -> TransformerMemory:
        """Every decoder layer's cross-attention keys/values (batch-first) and the mask."""
        kvs = [stage.layer.cross_attn.keys_values(enc_out) for stage in self.dec_stages]
        keys = torch.stack([k for k, _ in kvs])  # [L, B, heads, Ts, dh]
        values = torch.stack([v for _, v in kvs])
        mask = source_mask(src_len, enc_out.size(0), enc_out.device)
        return TransformerMemory(keys, values, mask)

    def init_state(self, batch: int) -> DecoderCache:
        """Empty caches ``[L,batch,heads,0,dh]`` in the embedding's dtype and device."""
        w = self.embed_stage.embedding.weight
        heads = self.dec_stages[0].layer.self_attn.heads
        empty = w.new_zeros(len(self.dec_stages), batch, heads, 0, self.hidden // heads)
        return DecoderCache(empty, empty.clone())

    def step_logits(
        self,
        y_prev: Tensor,
        state: DecoderCache,
        memory: TransformerMemory,
        vocab: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, DecoderCache, Tensor]:
        """One position (no dropout) for ``y_prev[N]`` (N = B*r, rows ``b*r..b*r+r-1`` use
        sentence b of ``memory``) -> unnormalized ``logits[N,V]`` (``[N,S]`` over ``vocab``),
        the caches with this position appended, ``attn[N,Ts]`` (the last decoder layer's
        cross-attention averaged over heads; 0 at padded positions)."""
        x = self.embed_stage.embed(y_prev.unsqueeze(0), state.keys.size(3)).squeeze(0)  # [N,H]
        keys: list[Tensor] = []
        values: list[Tensor] = []
        probs = x.new_zeros(0)
        for i, stage in enumerate(self.dec_stages):
            cache = (state.keys[i], state.values[i])
            x, (k, v), probs = stage.step(x, cache, (memory.keys[i], memory.values[i]), memory.mask)
            keys.append(k)
            values.append(v)
        logits = self.project(x, x, vocab)
        return logits, DecoderCache(torch.stack(keys), torch.stack(values)), probs.mean(dim=1)

    @staticmethod
    def reorder_state(state: DecoderCache, index: Tensor) -> DecoderCache:
        """Keep rows ``index[N']`` (long) of the caches: beams survive, move or are dropped."""
        return DecoderCache(state.keys.index_select(1, index), state.values.index_select(1, index))


# --- the registry entry (nmt/models/registry.py) ---
def stage_names(spec: ModelSpec) -> list[str]:
    """``Embed+Enc1, Enc2.., Dec1, Dec2.., Generator``."""
    return (["Embed+Enc1"] + [f"Enc{i}" for i in range(2, spec.enc_layers + 1)]
            + [f"Dec{i}" for i in range(1, spec.dec_layers + 1)] + ["Generator"])  # fmt: skip


def problems(spec: ModelSpec) -> list[str]:
    """What makes ``spec`` impossible for the Transformer (one phrase each)."""
    out = spec.below(hidden=1, enc_layers=1, dec_layers=1, heads=1)
    if spec.ffn < 0:
        out.append(f"model.ffn={spec.ffn} must be >= 0 (0 = 4 x hidden)")
    if spec.heads >= 1 and spec.hidden % spec.heads:
        out.append(f"model.hidden={spec.hidden} must be divisible by model.heads={spec.heads}")
    return out


def stages_from_spec(
    spec: ModelSpec, vocab_size: int, pad_id: int, prior: Tensor | None
) -> list[nn.Module]:
    """:func:`build_stages` from ``spec`` (``spec.init_range`` is not used: see its init)."""
    return build_stages(
        vocab_size, spec.hidden, spec.heads, spec.ffn_size, spec.enc_layers, spec.dec_layers,
        spec.dropout, spec.tie_embeddings, pad_id, prior,
    )  # fmt: skip


def describe(spec: ModelSpec) -> str:
    """One phrase for model cards."""
    return (
        f"A pre-norm Transformer translation model: {spec.enc_layers} encoder and "
        f"{spec.dec_layers} decoder layers, {spec.hidden} wide, {spec.heads} attention heads, "
        f"feed-forward {spec.ffn_size}"
    )


def analytic_costs(spec: ModelSpec, vocab: int, *args: Any, **kw: Any) -> CostTable:
    """:func:`parallel.planning.costs_transformer.analytic_transformer_costs` for ``spec``;
    ``args``:
    src_len, tgt_len, batch, micro_batch, flops_per_s[, launch_s]."""
    return analytic_transformer_costs(
        spec.enc_layers, spec.dec_layers, spec.hidden, spec.heads, spec.ffn_size, vocab,
        *args, **kw,
    )  # fmt: skip


ARCH = Arch(
    model=Transformer,
    stages=stages_from_spec,
    stage_names=stage_names,
    problems=problems,
    describe=describe,
    costs=analytic_costs,
    shape_keys=("hidden", "enc_layers", "dec_layers", "tie_embeddings", "heads", "ffn_size"),
)
