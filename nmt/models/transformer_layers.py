"""Pre-norm Transformer layers and pipeline stages (Vaswani et al. 2017; layer norm before
each sub-layer, as fairseq's ``--encoder-normalize-before``). H = model width, F = feed-forward
width, h = heads, dh = H / h.

Stages (docs/DESIGN.md, Stage boundary contract; every tensor time-major and contiguous):

``Embed+Enc1``: (src[Ts,B] long, src_len[B] long, tgt_in[Tt,B] long)
  -> (h[Ts,B,H], src_len, emb_tgt[Tt,B,H])
``Enc_i`` (i >= 2): (h, src_len, emb_tgt) -> (h', src_len, emb_tgt)
``Dec1``: (enc_out[Ts,B,H], src_len, emb_tgt) -> (x[Tt,B,H], enc_out, src_len)
``Dec_i`` (i >= 2): (x, enc_out, src_len) -> (x', enc_out, src_len)
the last ``Dec`` stage: -> (x[Tt,B,H], enc_out) (what :class:`nmt.models.gnmt_layers.Generator`
takes)

The last encoder stage ends with the encoder's final LayerNorm, the last decoder stage with the
decoder's. Besides ``forward`` (whole sequences, training) the decoder stages have ``step``
(one position against self-attention caches and precomputed cross-attention keys/values; no
dropout). Linear layers are called as modules so that int8 quantization (:mod:`nmt.models.int8`)
applies to them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nmt.models.attention import padding_mask

KV = tuple[Tensor, Tensor]  # (keys, values), each [B, h, T, dh]


def sinusoids(
    start: int, length: int, dim: int, dtype: torch.dtype, device: torch.device
) -> Tensor:
    """Fixed positions ``start .. start+length-1`` -> ``[length, dim]`` (fairseq layout: sines
    then cosines, timescales 1 .. 10000; an odd ``dim`` gets a zero last column). Computed in
    at least fp32, returned in ``dtype``."""
    work = torch.promote_types(dtype, torch.float32)
    half = dim // 2
    scale = math.log(10000.0) / max(half - 1, 1)
    freqs = torch.exp(torch.arange(half, dtype=work, device=device) * -scale)  # [half]
    pos = torch.arange(start, start + length, dtype=work, device=device)  # [length]
    angles = pos.unsqueeze(1) * freqs.unsqueeze(0)  # [length, half]
    out = torch.cat((angles.sin(), angles.cos(), angles.new_zeros(length, dim % 2)), dim=1)
    return out.to(dtype)


def source_mask(src_len: Tensor, ts: int, device: torch.device) -> Tensor:
    """``[B, Ts]`` bool, True at padded source positions. Lengths are clamped to >= 1 (shape
    inference of torch pipelining may run a stage on all-zero inputs)."""
    return padding_mask(src_len.to(device).clamp(min=1), ts)


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention with ``heads`` heads (no attention dropout)."""

    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(hidden, hidden)
        # no key bias: it adds q.b to every score of a query, which softmax ignores; its
        # gradient is rounding noise that Adam would turn into full-size updates
        self.k = nn.Linear(hidden, hidden, bias=False)
        self.v = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, hidden)

    def split(self, x: Tensor) -> Tensor:
        """``x[T,B,H]`` -> ``[B,h,T,dh]``."""
        t, b, hidden = x.shape
        return x.view(t, b, self.heads, hidden // self.heads).permute(1, 2, 0, 3)

    def keys_values(self, x: Tensor) -> KV:
        """Keys and values of ``x[T,B,H]``: each ``[B,h,T,dh]``."""
        return self.split(self.k(x)), self.split(self.v(x))

    def forward(self, query: Tensor, kv: KV, mask: Tensor | None, causal: bool) -> Tensor:
        """``query[Tq,B,H]`` attends over ``kv`` (``[B,h,Tk,dh]``) -> ``[Tq,B,H]``.

        ``mask[B,Tk]`` True at keys to ignore; ``causal``: query t sees keys 0..t only.
        """
        tq, b, hidden = query.shape
        q = self.split(self.q(query))  # [B, h, Tq, dh]
        allowed = None if mask is None else ~mask[:, None, None, :]
        ctx = F.scaled_dot_product_attention(q, *kv, attn_mask=allowed, is_causal=causal)
        out: Tensor = self.out(ctx.permute(2, 0, 1, 3).reshape(tq, b, hidden))
        return out

    def step(self, x: Tensor, kv: KV, mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """One query per row: ``x[N,H]`` over ``kv`` (``[B,h,Tk,dh]``, N = B*r: rows
        ``b*r .. b*r+r-1`` use sentence b) -> (``out[N,H]``, ``probs[N,h,Tk]``).
        ``mask[B,Tk]`` True at keys to ignore (probability exactly 0)."""
        keys, values = kv
        b, heads, tk, dh = keys.shape
        n = x.size(0)
        q = self.q(x).view(b, n // b, heads, dh).transpose(1, 2)  # [B, h, r, dh]
        scores = torch.matmul(q, keys.transpose(2, 3)) / math.sqrt(dh)  # [B, h, r, Tk]
        if mask is not None:
            scores = scores.masked_fill(mask[:, None, None, :], float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        ctx = torch.matmul(probs, values).transpose(1, 2).reshape(n, heads * dh)  # [N, H]
        return self.out(ctx), probs.transpose(1, 2).reshape(n, heads, tk)


class FeedForward(nn.Module):
    """``Linear(H, F) -> ReLU -> Linear(F, H)`` on ``[..., H]``."""

    def __init__(self, hidden: int, ffn: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden, ffn)
        self.fc2 = nn.Linear(ffn, hidden)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.fc2(torch.relu(self.fc1(x)))
        return out


class EncoderLayer(nn.Module):
    """``x + drop(SelfAttn(LN(x)))``, then ``x + drop(FFN(LN(x)))`` on ``x[Ts,B,H]``."""

    def __init__(self, hidden: int, heads: int, ffn: int, dropout: float) -> None:
        super().__init__()
        self.norm_attn = nn.LayerNorm(hidden)
        self.attn = MultiHeadAttention(hidden, heads)
        self.norm_ffn = nn.LayerNorm(hidden)
        self.ffn = FeedForward(hidden, ffn)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """``x[Ts,B,H]``, ``mask[B,Ts]`` (True at pads) -> ``[Ts,B,H]``."""
        h = self.norm_attn(x)
        x = x + self.dropout(self.attn(h, self.attn.keys_values(h), mask, False))
        out: Tensor = x + self.dropout(self.ffn(self.norm_ffn(x)))
        return out


class DecoderLayer(nn.Module):
    """Causal self-attention, cross-attention over the encoder output, feed-forward; each
    ``x + drop(sublayer(LN(x)))``."""

    def __init__(self, hidden: int, heads: int, ffn: int, dropout: float) -> None:
        super().__init__()
        self.norm_self = nn.LayerNorm(hidden)
        self.self_attn = MultiHeadAttention(hidden, heads)
        self.norm_cross = nn.LayerNorm(hidden)
        self.cross_attn = MultiHeadAttention(hidden, heads)
        self.norm_ffn = nn.LayerNorm(hidden)
        self.ffn = FeedForward(hidden, ffn)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, enc_out: Tensor, mask: Tensor) -> Tensor:
        """``x[Tt,B,H]``, ``enc_out[Ts,B,H]``, ``mask[B,Ts]`` -> ``[Tt,B,H]``."""
        h = self.norm_self(x)
        x = x + self.dropout(self.self_attn(h, self.self_attn.keys_values(h), None, True))
        memory = self.cross_attn.keys_values(enc_out)
        x = x + self.dropout(self.cross_attn(self.norm_cross(x), memory, mask, False))
        out: Tensor = x + self.dropout(self.ffn(self.norm_ffn(x)))
        return out

    def step(self, x: Tensor, cache: KV, memory: KV, mask: Tensor) -> tuple[Tensor, KV, Tensor]:
        """One position: ``x[N,H]``, ``cache`` (``[N,h,t,dh]`` each: positions so far),
        ``memory`` (``[B,h,Ts,dh]``, N = B*r), ``mask[B,Ts]`` -> (``x'[N,H]``, the cache with
        this position appended, cross-attention ``probs[N,h,Ts]``)."""
        h = self.norm_self(x).unsqueeze(0)  # [1, N, H]
        k, v = self.self_attn.keys_values(h)  # [N, h, 1, dh]
        cache = (torch.cat((cache[0], k), dim=2), torch.cat((cache[1], v), dim=2))
        x = x + self.self_attn.step(h.squeeze(0), (cache[0], cache[1]), None)[0]
        ctx, probs = self.cross_attn.step(self.norm_cross(x), memory, mask)
        x = x + ctx
        return x + self.ffn(self.norm_ffn(x)), cache, probs


class EncoderBlock(nn.Module):
    """An encoder layer and, in the last encoder stage, the encoder's final LayerNorm."""

    def __init__(self, hidden: int, heads: int, ffn: int, dropout: float, final: bool) -> None:
        super().__init__()
        self.layer = EncoderLayer(hidden, heads, ffn, dropout)
        self.norm = nn.LayerNorm(hidden) if final else None

    def encode(self, h: Tensor, mask: Tensor) -> Tensor:
        """``h[Ts,B,H]``, ``mask[B,Ts]`` -> ``h'[Ts,B,H]``."""
        h = self.layer(h, mask)
        return h if self.norm is None else self.norm(h)


class EmbedEncoder1(EncoderBlock):
    """Stage ``Embed+Enc1``: the shared (joint vocabulary) embedding, scaled by sqrt(H), plus
    sinusoidal positions and dropout, for both sides; encoder layer 1 on the source.

    (src[Ts,B] long, src_len[B] long, tgt_in[Tt,B] long)
      -> (h[Ts,B,H], src_len, emb_tgt[Tt,B,H])
    """

    def __init__(
        self,
        vocab: int,
        hidden: int,
        heads: int,
        ffn: int,
        dropout: float,
        pad_id: int,
        final: bool,
    ) -> None:
        super().__init__(hidden, heads, ffn, dropout, final)
        self.name = "Embed+Enc1"
        self.embedding = nn.Embedding(vocab, hidden, padding_idx=pad_id)
        self.dropout = nn.Dropout(dropout)

    def embed(self, tokens: Tensor, start: int = 0) -> Tensor:
        """``tokens[T,B]`` at positions ``start..`` -> ``sqrt(H) * E[tokens] + pos``
        (``[T,B,H]``, no dropout)."""
        w = self.embedding.weight
        pos = sinusoids(start, tokens.size(0), w.size(1), w.dtype, w.device)
        emb: Tensor = self.embedding(tokens)
        return emb * math.sqrt(w.size(1)) + pos.unsqueeze(1)

    def forward(
        self, src: Tensor, src_len: Tensor, tgt_in: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        x = self.dropout(self.embed(src))
        h = self.encode(x, source_mask(src_len, src.size(0), x.device))
        return h.contiguous(), src_len, self.dropout(self.embed(tgt_in)).contiguous()


class EncoderStage(EncoderBlock):
    """Stage ``Enc_i`` (i >= 2). (h[Ts,B,H], src_len[B], emb_tgt[Tt,B,H]) -> same shapes."""

    def __init__(
        self, index: int, hidden: int, heads: int, ffn: int, dropout: float, final: bool
    ) -> None:
        super().__init__(hidden, heads, ffn, dropout, final)
        self.name = f"Enc{index}"

    def forward(self, h: Tensor, src_len: Tensor, emb_tgt: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        out = self.encode(h, source_mask(src_len, h.size(0), h.device))
        return out.contiguous(), src_len, emb_tgt


class DecoderBlock(nn.Module):
    """A decoder layer and, in the last decoder stage, the decoder's final LayerNorm."""

    def __init__(
        self, index: int, hidden: int, heads: int, ffn: int, dropout: float, final: bool
    ) -> None:
        super().__init__()
        self.name = f"Dec{index}"
        self.layer = DecoderLayer(hidden, heads, ffn, dropout)
        self.norm = nn.LayerNorm(hidden) if final else None

    def decode(self, x: Tensor, enc_out: Tensor, src_len: Tensor) -> tuple[Tensor, ...]:
        """``x[Tt,B,H]`` -> ``(x', enc_out, src_len)``, or ``(x', enc_out)`` when last."""
        x = self.layer(x, enc_out, source_mask(src_len, enc_out.size(0), x.device))
        if self.norm is None:
            return x.contiguous(), enc_out, src_len
        return self.norm(x).contiguous(), enc_out

    def step(self, x: Tensor, cache: KV, memory: KV, mask: Tensor) -> tuple[Tensor, KV, Tensor]:
        """:meth:`DecoderLayer.step`, then the final norm when last."""
        x, cache, probs = self.layer.step(x, cache, memory, mask)
        return (x if self.norm is None else self.norm(x)), cache, probs


class Decoder1(DecoderBlock):
    """Stage ``Dec1``: (enc_out[Ts,B,H], src_len[B], emb_tgt[Tt,B,H]) -> (x[Tt,B,H], enc_out,
    src_len), or (x, enc_out) when it is the only decoder stage."""

    def forward(self, enc_out: Tensor, src_len: Tensor, emb_tgt: Tensor) -> tuple[Tensor, ...]:
        return self.decode(emb_tgt, enc_out, src_len)


class DecoderStage(DecoderBlock):
    """Stage ``Dec_i`` (i >= 2): (x[Tt,B,H], enc_out[Ts,B,H], src_len[B]) -> (x', enc_out,
    src_len), or (x', enc_out) in the last decoder stage."""

    def forward(self, x: Tensor, enc_out: Tensor, src_len: Tensor) -> tuple[Tensor, ...]:
        return self.decode(x, enc_out, src_len)
