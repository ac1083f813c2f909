"""The model interface: what training, pipelining, search, translation, profiling and the cost
model may know about a translation model (docs/DESIGN.md, "The model interface").

A model is a list of pipeline **stages** (each maps a tuple of contiguous time-major tensors
to a tuple of tensors; the first takes ``(src[Ts,B], src_len[B], tgt_in[Tt,B])``, the last is
a :class:`nmt.models.gnmt_layers.Generator` giving ``logits[Tt,B,V]``), wrapped in a
:class:`Seq2Seq` that
runs them in order on one device and adds incremental decoding:

- ``encode(src, src_len) -> enc_out[Ts,B,H]``;
- ``prepare_memory(enc_out, src_len) -> Memory`` (what every decoding step reads; batch-first,
  with ``mask[B,Ts]`` True at padded source positions, ``index_select(index)`` and
  ``for_rows(rows)``);
- ``init_state(batch) -> state`` and ``reorder_state(state, index[N']) -> state``;
- ``step_logits(y_prev[N], state, memory, vocab) -> (logits[N,V], state, attn[N,Ts])``, where
  rows ``b*r .. b*r+r-1`` of N = B*r belong to sentence b of the memory (beams), or, for a
  memory from ``for_rows(rows)``, row n to sentence ``rows[n]``;
- ``input_embedding()`` (device and dtype of the model), ``shortlisted(ids)`` (the output
  layer restricted to per-sentence vocabularies).

:class:`ModelSpec` is the architecture-independent model config; :mod:`nmt.models.registry` builds
a model
from it by ``spec.arch``. Nothing outside a model's own module knows which one it is.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, is_dataclass
from typing import Any, Protocol, cast

import numpy as np
import torch
from torch import Tensor, nn

from nmt.models.gnmt_layers import Generator
from nmt.models.int8 import quantize_modules
from nmt.models.loss import label_smoothed_nll

__all__ = ["Arch", "Memory", "ModelSpec", "Seq2Seq", "log_unigram_prior", "quantize_int8"]


class Memory(Protocol):
    """The source side as every decoding step reads it (batch-first)."""

    @property
    def mask(self) -> Tensor:
        """``[B, Ts]`` bool, True at padded source positions."""
        ...

    def index_select(self, index: Tensor) -> Memory:
        """Keep sentences ``index[B']`` (long)."""
        ...

    def for_rows(self, rows: Tensor) -> Memory:
        """For query rows of sentences ``rows[N]`` (long, non-decreasing), any number per
        sentence (a plain ``index_select(rows)`` is a correct implementation)."""
        ...


# a shortlisted output layer (weight rows, bias) or None; one decoding step's
# (log-probabilities or logits, state, attention)
Columns = tuple[Tensor, Tensor] | None
StepOut = tuple[Tensor, Any, Tensor]


def _fields_of(config: object) -> dict[str, Any]:
    """The fields of a dataclass instance as a dict."""
    if not is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"a model config is a dataclass or a dict, not {type(config).__name__}")
    return asdict(config)


@dataclass(frozen=True)
class ModelSpec:
    """``model.*`` of the config: the architecture and its sizes.

    ``hidden`` is the embedding size (= the model width). GNMT uses ``enc_layers >= 2`` (the
    bidirectional layer counts), ``dec_layers >= 1``; the Transformer adds ``heads`` and
    ``ffn`` (0 = 4 x hidden).
    """

    arch: str = "gnmt"
    hidden: int = 256
    enc_layers: int = 4
    dec_layers: int = 4
    dropout: float = 0.2
    tie_embeddings: bool = True
    init_range: float = 0.1
    heads: int = 4
    ffn: int = 0

    @classmethod
    def from_config(cls, m: Mapping[str, Any] | object, dropout: float | None = None) -> ModelSpec:
        """From ``cfg.model`` (the config's dataclass or the plain dict a checkpoint keeps;
        keys missing from older checkpoints take their defaults). ``dropout`` overrides."""
        values = dict(m) if isinstance(m, Mapping) else _fields_of(m)
        kw: dict[str, Any] = {}
        for f in fields(cls):
            value = values.get(f.name)
            if value is not None:
                kw[f.name] = cast(Callable[[Any], Any], type(f.default))(value)
        if dropout is not None:
            kw["dropout"] = dropout
        return cls(**kw)

    def below(self, **low: int) -> list[str]:
        """One phrase per size under its minimum (``hidden=1, ...``), and a dropout outside
        [0, 1): what every architecture's ``problems`` starts from."""
        out = [
            f"model.{k}={getattr(self, k)} must be >= {m}"
            for k, m in low.items()
            if int(getattr(self, k)) < m
        ]
        if not 0.0 <= self.dropout < 1.0:
            out.append(f"model.dropout={self.dropout} must be in [0, 1)")
        return out

    @property
    def ffn_size(self) -> int:
        return self.ffn or 4 * self.hidden


class Seq2Seq(nn.Module):
    """An encoder-decoder as pipeline stages ``[..., Generator]`` on one device.

    Subclasses implement the incremental decoding API (module docstring) and
    :meth:`input_embedding`; training (:meth:`forward`, :meth:`loss`) is the stage chain.
    """

    arch = ""  # the registry key (nmt/models/registry.py)

    def __init__(self, stages: list[nn.Module]) -> None:
        super().__init__()
        self.stages = nn.ModuleList(stages)
        if not isinstance(stages[-1], Generator):
            raise ValueError("the last stage must be the Generator")
        self.shortlist: Any = None  # nmt.decode.shortlist.Shortlist, set by inference loading

    @property
    def generator(self) -> Generator:
        return self.stages[-1]  # type: ignore[return-value]

    def input_embedding(self) -> nn.Embedding:
        """The token embedding (kept in float by int8 quantization: the model's dtype)."""
        raise NotImplementedError

    @property
    def hidden(self) -> int:
        return self.input_embedding().embedding_dim

    @property
    def vocab_size(self) -> int:
        return self.input_embedding().num_embeddings

    # --- training ---
    def forward(self, src: Tensor, src_len: Tensor, tgt_in: Tensor) -> Tensor:
        """``src[Ts,B]``, ``src_len[B]``, ``tgt_in[Tt,B]`` -> ``logits[Tt,B,V]``."""
        x: tuple[Tensor, ...] = (src, src_len, tgt_in)
        for stage in self.stages:
            out = stage(*x)
            x = out if isinstance(out, tuple) else (out,)
        return x[0]

    def decoder_out(self, src: Tensor, src_len: Tensor, tgt_in: Tensor) -> tuple[Tensor, ...]:
        """All stages but the generator: its inputs (``h_dec[Tt,B,H]`` first)."""
        x: tuple[Tensor, ...] = (src, src_len, tgt_in)
        for stage in self.stages[:-1]:
            x = stage(*x)
        return x

    def logits_at(self, src: Tensor, src_len: Tensor, tgt_in: Tensor, keep: Tensor) -> Tensor:
        """Logits of the positions where ``keep[Tt,B]`` (bool) is true: ``logits[N,V]``.

        Rows in time-major order, the order of ``tgt_out[keep]``. Equal to
        ``self(src, src_len, tgt_in)[keep]``, but the generator (H x V matmul, the largest of
        the model) only runs on those N rows: no work on padding. On a GPU this costs one
        host-device synchronisation (the number of kept positions).
        """
        h_dec, *rest = self.decoder_out(src, src_len, tgt_in)
        rows = keep.reshape(-1).nonzero().squeeze(1)  # [N]
        h = h_dec.reshape(-1, h_dec.size(-1)).index_select(0, rows)  # [N, H]
        logits: Tensor = self.generator(h, *rest)  # rest: only kept in the graph
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
        """Label-smoothed (loss_sum, nll_sum) of ``tgt_out[Tt,B]`` (see :mod:`nmt.models.loss`).

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
        raise NotImplementedError

    def prepare_memory(self, enc_out: Tensor, src_len: Tensor) -> Memory:
        raise NotImplementedError

    def init_state(self, batch: int) -> Any:
        raise NotImplementedError

    def step_logits(
        self, y_prev: Tensor, state: Any, memory: Any, vocab: Columns = None
    ) -> StepOut:
        raise NotImplementedError

    @staticmethod
    def reorder_state(state: Any, index: Tensor) -> Any:
        raise NotImplementedError

    def decode_step(
        self, y_prev: Tensor, state: Any, enc_out: Tensor, src_len: Tensor
    ) -> tuple[Tensor, Any, Tensor]:
        """One decoder step for ``y_prev[B]`` -> (``log_probs[B,V]``, state, ``attn[B,Ts]``),
        recomputing the memory (for repeated steps use :meth:`prepare_memory` and
        :meth:`step`)."""
        return self.step(y_prev, state, self.prepare_memory(enc_out, src_len))

    def step(self, y_prev: Tensor, state: Any, memory: Any, vocab: Columns = None) -> StepOut:
        """One decoding step with precomputed memory, no dropout -> (``log_probs[N,V]`` in at
        least fp32, state, ``attn[N,Ts]``). ``vocab``: each sentence's shortlisted output
        (:meth:`shortlisted`); the log-probabilities are then over its columns (``[N,S]``)."""
        logits, new_state, attn = self.step_logits(y_prev, state, memory, vocab)
        dtype = torch.promote_types(logits.dtype, torch.float32)
        return torch.log_softmax(logits, dim=-1, dtype=dtype), new_state, attn

    def project(self, h: Tensor, rest: Tensor, vocab: tuple[Tensor, Tensor] | None) -> Tensor:
        """The generator on decoder outputs ``h[N,H]``: full logits, or over ``vocab``."""
        if vocab is None:
            logits: Tensor = self.generator(h, rest)
            return logits
        return Generator.project(h, *vocab)

    def shortlisted(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        """The output layer restricted to ``ids[B,S]`` (:meth:`Generator.shortlisted`)."""
        return self.generator.shortlisted(ids)


@dataclass(frozen=True)
class Arch:
    """One architecture in the registry (:mod:`nmt.models.registry`): how to check a spec, name and
    build
    its stages, and wrap them in its :class:`Seq2Seq`; ``costs`` gives the analytic cost table
    the planner and simulator use (``parallel.planning.costs``), or ``None``."""

    model: type[Seq2Seq]
    stages: Callable[[ModelSpec, int, int, Tensor | None], list[nn.Module]]
    stage_names: Callable[[ModelSpec], list[str]]
    problems: Callable[[ModelSpec], list[str]]
    describe: Callable[[ModelSpec], str]  # one phrase for model cards
    costs: Callable[..., Any] | None = None
    # the ModelSpec attributes that fix the weights' shapes (a resume must agree on them)
    shape_keys: tuple[str, ...] = ("hidden", "enc_layers", "dec_layers", "tie_embeddings")


def log_unigram_prior(seqs: Sequence[Sequence[int]], vocab_size: int, eos_id: int) -> Tensor:
    """``[V]`` log of the add-one-smoothed unigram distribution of target sequences, each
    followed by ``eos_id`` (what the generator predicts): the generator bias at step 0."""
    counts = np.ones(vocab_size, dtype=np.float64)
    flat = np.fromiter((i for s in seqs for i in s), dtype=np.int64)
    counts += np.bincount(flat, minlength=vocab_size)[:vocab_size]
    counts[eos_id] += len(seqs)
    return torch.from_numpy(np.log(counts / counts.sum())).float()


def quantize_int8(model: Seq2Seq) -> Seq2Seq:
    """Int8 copy of ``model`` for CPU inference (:mod:`nmt.models.int8`): every ``nn.Linear`` and
    the decoder's LSTMs; weights per output channel, activations per row, so a sentence
    translates the same alone and in any batch. The encoder's LSTMs, the embedding and the
    gates' arithmetic stay float32; the tied generator becomes an int8 copy of the embedding
    matrix. The input model is not modified.
    """
    qmodel = copy.deepcopy(model).eval()
    quantize_modules(qmodel)
    return qmodel
