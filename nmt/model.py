"""GNMT (NVIDIA GNMT v2 variant) as a list of pipeline stages, plus incremental decoding.

Stages (docs/DESIGN.md, Stage boundary contract):
``[Embed+Enc1, Enc2, ..., EncN, Dec1+Attention, Dec2, ..., DecM, Generator]``.
The single-device model runs them in order; :class:`GNMT` also exposes an incremental decoding
API (``encode`` / ``init_state`` / ``decode_step`` / ``reorder_state``) over the same modules.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from nmt.attention import AttentionMemory, BahdanauAttention
from nmt.layers import AttentionDecoder1, DecoderLayer, EmbedEncoder1, EncoderLayer, Generator
from nmt.loss import label_smoothed_nll

__all__ = [
    "GNMT",
    "AttentionMemory",
    "DecoderState",
    "build_model",
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
        if output_prior is not None:
            if output_prior.shape != (vocab_size,):
                raise ValueError(
                    f"output_prior has shape {tuple(output_prior.shape)}, expected ({vocab_size},)"
                )
            generator.proj.bias.copy_(output_prior)
    if tie_embeddings:
        embed = stages[0]
        assert isinstance(embed, EmbedEncoder1)
        generator.proj.weight = embed.embedding.weight
    return stages


def log_unigram_prior(seqs: Sequence[Sequence[int]], vocab_size: int, eos_id: int) -> Tensor:
    """``[V]`` log of the add-one-smoothed unigram distribution of target sequences, each
    followed by ``eos_id`` (what the generator predicts): the generator bias at step 0."""
    counts = np.ones(vocab_size, dtype=np.float64)
    flat = np.fromiter((i for s in seqs for i in s), dtype=np.int64)
    counts += np.bincount(flat, minlength=vocab_size)[:vocab_size]
    counts[eos_id] += len(seqs)
    return torch.from_numpy(np.log(counts / counts.sum())).float()


def build_model(
    vocab_size: int,
    hidden: int,
    enc_layers: int,
    dec_layers: int,
    dropout: float,
    tie_embeddings: bool,
    init_range: float,
    pad_id: int,
    output_prior: Tensor | None = None,
) -> GNMT:
    """:func:`build_stages` wrapped in a single-device :class:`GNMT`."""
    return GNMT(
        build_stages(
            vocab_size,
            hidden,
            enc_layers,
            dec_layers,
            dropout,
            tie_embeddings,
            init_range,
            pad_id,
            output_prior,
        )
    )


class GNMT(nn.Module):
    """Single-device GNMT over the pipeline stages (same modules and weights)."""

    def __init__(self, stages: Sequence[nn.Module]) -> None:
        super().__init__()
        self.stages = nn.ModuleList(stages)
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

    @property
    def generator(self) -> Generator:
        return self.stages[-1]  # type: ignore[return-value]

    @property
    def hidden(self) -> int:
        return self.embed_stage.embedding.embedding_dim

    @property
    def vocab_size(self) -> int:
        return self.embed_stage.embedding.num_embeddings

    # --- training ---
    def forward(self, src: Tensor, src_len: Tensor, tgt_in: Tensor) -> Tensor:
        """``src[Ts,B]``, ``src_len[B]``, ``tgt_in[Tt,B]`` -> ``logits[Tt,B,V]``."""
        x: tuple[Tensor, ...] = (src, src_len, tgt_in)
        for stage in self.stages:
            out = stage(*x)
            x = out if isinstance(out, tuple) else (out,)
        return x[0]

    def decoder_out(self, src: Tensor, src_len: Tensor, tgt_in: Tensor) -> tuple[Tensor, Tensor]:
        """All stages but the generator: -> (``h_dec[Tt,B,H]``, ``ctx[Tt,B,H]``)."""
        x: tuple[Tensor, ...] = (src, src_len, tgt_in)
        for stage in self.stages[:-1]:
            x = stage(*x)
        return x[0], x[1]

    def logits_at(self, src: Tensor, src_len: Tensor, tgt_in: Tensor, keep: Tensor) -> Tensor:
        """Logits of the positions where ``keep[Tt,B]`` (bool) is true: ``logits[N,V]``.

        Rows in time-major order, the order of ``tgt_out[keep]``. Equal to
        ``self(src, src_len, tgt_in)[keep]``, but the generator (H x V matmul, the largest of
        the model) only runs on those N rows: no work on padding. On a GPU this costs one
        host-device synchronisation (the number of kept positions).
        """
        h_dec, ctx = self.decoder_out(src, src_len, tgt_in)
        rows = keep.reshape(-1).nonzero().squeeze(1)  # [N]
        h = h_dec.reshape(-1, h_dec.size(-1)).index_select(0, rows)  # [N, H]
        logits: Tensor = self.generator(h, ctx)  # ctx: only kept in the graph (Generator)
        return logits

    def loss(
        self,
        src: Tensor,
        src_len: Tensor,
        tgt_in: Tensor,
        tgt_out: Tensor,
        pad_id: int,
        eps: float,
        skip_pad: bool = True,
    ) -> tuple[Tensor, Tensor]:
        """Label-smoothed (loss_sum, nll_sum) of ``tgt_out[Tt,B]`` (see :mod:`nmt.loss`).

        ``skip_pad``: logits only at non-pad targets (:meth:`logits_at`); ``False``: the
        full ``logits[Tt,B,V]`` with pads masked in the loss. Same values and gradients.
        """
        if not skip_pad:
            return label_smoothed_nll(self(src, src_len, tgt_in), tgt_out, pad_id, eps)
        keep = tgt_out != pad_id
        logits = self.logits_at(src, src_len, tgt_in, keep)
        return label_smoothed_nll(logits, tgt_out[keep], pad_id, eps)

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

    def decode_step(
        self, y_prev: Tensor, state: DecoderState, enc_out: Tensor, src_len: Tensor
    ) -> tuple[Tensor, DecoderState, Tensor]:
        """One decoder step for ``y_prev[B]`` -> (``log_probs[B,V]``, state, ``attn[B,Ts]``).

        ``enc_out[Ts,B',H]``, ``src_len[B']`` with B = B' * r: rows ``b*r .. b*r+r-1`` belong
        to sentence b (beams). For repeated steps precompute :meth:`prepare_memory` and use
        :meth:`step` instead (this recomputes the attention keys every call).
        """
        return self.step(y_prev, state, self.prepare_memory(enc_out, src_len))

    def step(
        self,
        y_prev: Tensor,
        state: DecoderState,
        memory: AttentionMemory,
        vocab: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, DecoderState, Tensor]:
        """:meth:`decode_step` with precomputed attention memory. No dropout (inference).
        ``vocab``: each sentence's shortlisted output (:meth:`Generator.shortlisted`); the
        log-probabilities are then over its columns (``[N,S]``)."""
        logits, new_state, attn = self.step_logits(y_prev, state, memory, vocab)
        dtype = torch.promote_types(logits.dtype, torch.float32)
        return torch.log_softmax(logits, dim=-1, dtype=dtype), new_state, attn

    def step_logits(
        self,
        y_prev: Tensor,
        state: DecoderState,
        memory: AttentionMemory,
        vocab: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, DecoderState, Tensor]:
        """:meth:`step` returning unnormalized ``logits[N,V]`` instead of log-probabilities."""
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
        logits = self.generator(x, ctx) if vocab is None else self.generator.project(x, *vocab)
        return logits, DecoderState(torch.stack(hs), torch.stack(cs)), attn

    @staticmethod
    def reorder_state(state: DecoderState, index: Tensor) -> DecoderState:
        """Select rows ``index[B']`` (long) of the state: beams survive, move or are dropped."""
        return DecoderState(state.h.index_select(1, index), state.c.index_select(1, index))


def quantize_int8(model: GNMT) -> GNMT:
    """Dynamic int8 copy of ``model`` for CPU inference (``nn.LSTM`` and ``nn.Linear``).

    Weights are quantized per tensor ahead of time, activations per batch at run time. The
    bidirectional encoder LSTM runs packed there (the dynamic quantized LSTM accepts
    PackedSequence; the dense path of ``EmbedEncoder1`` is for float ``nn.LSTM``). The tied
    generator becomes a quantized copy of the embedding matrix; the embedding itself stays
    fp32. The input model is not modified.
    """
    from torch.ao.quantization import quantize_dynamic

    fp32 = copy.deepcopy(model).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")
        quantize_dynamic(fp32, {nn.LSTM, nn.Linear}, dtype=torch.qint8, inplace=True)  # type: ignore[no-untyped-call]
    return fp32
