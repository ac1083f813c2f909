"""Pipeline stages of GNMT (see the Stage boundary contract in docs/DESIGN.md).

Every stage maps a tuple of contiguous time-major tensors to a tuple of tensors. H = hidden.
Besides ``forward`` (whole sequences, training), the decoder stages have ``step`` methods that
advance one time step with explicit LSTM state (incremental decoding; no dropout).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from nmt.models.attention import AttentionMemory, BahdanauAttention
from nmt.models.dropout import SeqDropout
from nmt.models.int8 import Int8LSTM

LSTMState = tuple[Tensor, Tensor]  # (h, c), each [B, H]


def lstm_step(lstm: nn.Module, x: Tensor, state: LSTMState) -> LSTMState:
    """One time step of a single-layer unidirectional LSTM: ``x[B,in]``, (h, c)[B,H] -> (h, c).

    Float ``nn.LSTM``: the fused ``torch.lstm_cell`` (no per-call weight repacking); an
    :class:`nmt.models.int8.Int8LSTM`: its own ``step``.
    """
    if isinstance(lstm, Int8LSTM):
        return lstm.step(x, state)
    if not isinstance(lstm, nn.LSTM):
        raise TypeError(f"lstm_step: expected nn.LSTM or Int8LSTM, got {type(lstm).__name__}")
    w_ih, w_hh, b_ih, b_hh = lstm.all_weights[0]
    return torch.lstm_cell(x, state, w_ih, w_hh, b_ih, b_hh)


def reversal_index(lengths: Tensor, total: int) -> Tensor:
    """``lengths[B]`` (each in 1..total) -> ``index[total*B]`` long, on ``lengths``' device.

    Row of the time-major flattening ``[total*B, ...]`` of a ``[total, B, ...]`` tensor that
    position (t, b) takes when every sentence is reversed within its own length:
    ``(len_b - 1 - t) * B + b`` for ``t < len_b``, ``t * B + b`` (padding stays) otherwise.
    The permutation is its own inverse.
    """
    t = torch.arange(total, device=lengths.device).unsqueeze(1)  # [T, 1]
    n = lengths.unsqueeze(0)  # [1, B]
    steps = torch.where(t < n, n - 1 - t, t)  # [T, B]
    return (steps * lengths.size(0) + torch.arange(lengths.size(0), device=lengths.device)).view(-1)


def bilstm_dense(lstm: nn.LSTM, x: Tensor, lengths: Tensor) -> Tensor:
    """Single-layer bidirectional ``lstm`` over ``x[T,B,in]`` with ``lengths[B]`` (1..T)
    -> ``h[T,B,2H]``, zeros at padded positions (t >= len_b).

    The same function as pack_padded_sequence -> ``lstm`` -> pad_packed_sequence, computed on
    dense tensors, where torch's CPU LSTM uses the fused oneDNN kernel (forward and backward);
    the packed CPU path runs one small cell per time step and its backward is several times
    slower. Forward direction: the padded input as is (padding comes after each sentence, so
    it only reaches padded outputs). Backward direction: a forward LSTM with the ``*_reverse``
    weights over each sentence reversed within its own length (:func:`reversal_index`), its
    outputs reversed back. Padded outputs are then zeroed.
    """
    total, batch = x.size(0), x.size(1)
    if lstm.num_layers != 1 or not lstm.bidirectional or not lstm.bias or lstm.proj_size:
        raise ValueError("bilstm_dense needs a single-layer bidirectional LSTM with biases")
    lengths = lengths.to(x.device)
    h0 = x.new_zeros(1, batch, lstm.hidden_size)
    weights = [tuple(w) for w in lstm.all_weights]  # (w_ih, w_hh, b_ih, b_hh) per direction

    def run(inp: Tensor, direction: int) -> Tensor:  # a forward LSTM: [T,B,in] -> [T,B,H]
        out: Tensor = torch.lstm(
            inp, (h0, h0), weights[direction], True, 1, 0.0, lstm.training, False, False
        )[0]
        return out

    fwd = run(x, 0)
    index = reversal_index(lengths, total)
    x_rev = x.reshape(total * batch, -1).index_select(0, index).view_as(x)
    bwd = run(x_rev, 1).reshape(total * batch, -1).index_select(0, index).view_as(fwd)
    pad = torch.arange(total, device=x.device).unsqueeze(1) >= lengths.unsqueeze(0)  # [T, B]
    return torch.cat((fwd, bwd), dim=-1).masked_fill(pad.unsqueeze(-1), 0.0)


def without_sentences(x: Tensor, lo: int, hi: int) -> Tensor:
    """``x[t,B,...]`` without the sentences ``[lo, hi)``: ``[t,B-(hi-lo),...]``."""
    if hi <= lo:
        return x
    if lo == 0 or hi == x.size(1):
        return x[:, hi:] if lo == 0 else x[:, :lo]
    return torch.cat((x[:, :lo], x[:, hi:]), dim=1)


def attend(attention: BahdanauAttention, x: Tensor, memory: AttentionMemory) -> Tensor:
    """The context of queries ``x[t,B,H]`` (time-major) over ``memory`` (B sentences):
    ``ctx[t,B,H]``."""
    ctx: Tensor = attention(x.transpose(0, 1), memory)[0]
    return ctx.transpose(0, 1)


class EmbedEncoder1(nn.Module):
    """Stage ``Embed+Enc1``: shared embedding + bidirectional LSTM over the real positions.

    (src[Ts,B] long, src_len[B] long, tgt_in[Tt,B] long)
      -> (h[Ts,B,2H], src_len, emb_tgt[Tt,B,H])

    A float ``nn.LSTM`` on CPU runs dense (:func:`bilstm_dense`, oneDNN kernels); otherwise
    (another device, or ``packed = True``) the LSTM runs over a PackedSequence. Both give the
    same result (zeros at padded positions).
    """

    packed: bool = False  # True: always the PackedSequence path (benchmarks, comparisons)

    def __init__(self, vocab_size: int, hidden: int, dropout: float, pad_id: int) -> None:
        super().__init__()
        self.name = "Embed+Enc1"
        self.embedding = nn.Embedding(vocab_size, hidden, padding_idx=pad_id)
        self.dropout = SeqDropout(dropout)
        self.lstm = nn.LSTM(hidden, hidden, bidirectional=True)

    def encode(self, src: Tensor, src_len: Tensor) -> Tensor:
        """``src[Ts,B]``, ``src_len[B]`` -> ``h[Ts,B,2H]`` (zeros at padded positions)."""
        x = self.dropout(self.embedding(src))
        # clamp: shape inference of older torch pipelining runs stages on all-zero inputs
        if not self.packed and type(self.lstm) is nn.LSTM and x.device.type == "cpu":
            return bilstm_dense(self.lstm, x, src_len.clamp(min=1))
        packed = pack_padded_sequence(x, src_len.cpu().clamp(min=1), enforce_sorted=False)
        out, _ = self.lstm(packed)
        h, _ = pad_packed_sequence(out, total_length=src.size(0))
        return h.contiguous()

    def forward(
        self, src: Tensor, src_len: Tensor, tgt_in: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        return self.encode(src, src_len), src_len, self.embedding(tgt_in).contiguous()


class EncoderLayer(nn.Module):
    """Stage ``Enc_i`` (i >= 2): dropout + LSTM (2H->H for i=2, H->H with residual for i>=3).

    (h[Ts,B,in], src_len[B], emb_tgt[Tt,B,H]) -> (h'[Ts,B,H], src_len, emb_tgt)
    """

    def __init__(self, index: int, input_size: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.name = f"Enc{index}"
        self.residual = index >= 3
        self.dropout = SeqDropout(dropout)
        self.lstm = nn.LSTM(input_size, hidden)

    def encode(self, h: Tensor) -> Tensor:
        """``h[Ts,B,in]`` -> ``h'[Ts,B,H]``."""
        out: Tensor = self.lstm(self.dropout(h))[0]
        return out + h if self.residual else out

    def forward(self, h: Tensor, src_len: Tensor, emb_tgt: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.encode(h).contiguous(), src_len, emb_tgt

    def chunk(
        self, h: Tensor, state: LSTMState | None, span: tuple[int, int]
    ) -> tuple[Tensor, LSTMState]:
        """Time chunk ``h[t,B,in]`` at ``span = (start, total)`` from ``state`` (None: zeros)
        -> (``h'[t,B,H]``, state); dropout: the whole sequence's mask, sliced."""
        out, (hn, cn) = self.lstm(self.dropout.chunk(h, *span), state)
        return (out + h if self.residual else out), (hn, cn)


class AttentionDecoder1(nn.Module):
    """Stage ``Dec1+Attention``: decoder LSTM 1 over the target embeddings; its outputs query
    the normalized Bahdanau attention over the top encoder outputs.

    (enc_out[Ts,B,H], src_len[B], emb_tgt[Tt,B,H]) -> (h_dec[Tt,B,H], ctx[Tt,B,H])
    """

    def __init__(self, hidden: int, dropout: float) -> None:
        super().__init__()
        self.name = "Dec1+Attention"
        self.dropout = SeqDropout(dropout)
        self.lstm = nn.LSTM(hidden, hidden)
        self.attention = BahdanauAttention(hidden)

    def forward(self, enc_out: Tensor, src_len: Tensor, emb_tgt: Tensor) -> tuple[Tensor, Tensor]:
        x, _ = self.lstm(self.dropout(emb_tgt))  # [Tt, B, H]
        memory = self.attention.memory(enc_out, src_len)
        ctx, _ = self.attention(x.transpose(0, 1), memory)  # [B, Tt, H]
        return x.contiguous(), ctx.transpose(0, 1).contiguous()

    def chunk(
        self,
        emb_tgt: Tensor,
        state: LSTMState | None,
        memory: AttentionMemory,
        span: tuple[int, int],
        elsewhere: tuple[int, int] = (0, 0),
    ) -> tuple[Tensor, Tensor, LSTMState]:
        """Time chunk ``emb_tgt[t,B,H]`` at ``span = (start, total)`` from ``state`` ->
        (``x[t,B,H]``, ``ctx[t,B',H]``, state): the attention of a position needs only its own
        query (no input feeding). The sentences ``elsewhere = [lo, hi)`` get no attention
        here (``memory`` holds the others, B' = B - (hi - lo)): another process runs theirs
        (:func:`attend`)."""
        x, (hn, cn) = self.lstm(self.dropout.chunk(emb_tgt, *span), state)
        return x, attend(self.attention, without_sentences(x, *elsewhere), memory), (hn, cn)

    def step(
        self, emb: Tensor, state: LSTMState, memory: AttentionMemory
    ) -> tuple[Tensor, Tensor, Tensor, LSTMState]:
        """One step: ``emb[N,H]`` -> (``x[N,H]``, ``ctx[N,H]``, ``probs[N,Ts]``, new state).

        N = memory batch * beams per sentence (rows grouped by sentence), or any number per
        sentence for a memory laid out by ``AttentionMemory.for_rows``.
        """
        x, c = lstm_step(self.lstm, emb, state)
        ctx, probs = self.attention(x.unsqueeze(1), memory)
        return x, ctx.squeeze(1), probs.squeeze(1), (x, c)


class DecoderLayer(nn.Module):
    """Stage ``Dec_i`` (i >= 2): dropout + LSTM over cat(h, ctx) (2H->H), residual from i=3.

    (h_dec[Tt,B,H], ctx[Tt,B,H]) -> (h_dec'[Tt,B,H], ctx)
    """

    def __init__(self, index: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.name = f"Dec{index}"
        self.residual = index >= 3
        self.dropout = SeqDropout(dropout)
        self.lstm = nn.LSTM(2 * hidden, hidden)

    def forward(self, h_dec: Tensor, ctx: Tensor) -> tuple[Tensor, Tensor]:
        out, _ = self.lstm(self.dropout(torch.cat((h_dec, ctx), dim=-1)))
        if self.residual:
            out = out + h_dec
        return out.contiguous(), ctx

    def chunk(
        self, h_dec: Tensor, ctx: Tensor, state: LSTMState | None, span: tuple[int, int]
    ) -> tuple[Tensor, LSTMState]:
        """Time chunk ``h_dec[t,B,H]``, ``ctx[t,B,H]`` at ``span = (start, total)`` from
        ``state`` -> (``h'[t,B,H]``, state)."""
        x = self.dropout.chunk(torch.cat((h_dec, ctx), dim=-1), *span)
        out, (hn, cn) = self.lstm(x, state)
        return (out + h_dec if self.residual else out), (hn, cn)

    def step(self, x: Tensor, ctx: Tensor, state: LSTMState) -> tuple[Tensor, LSTMState]:
        """One step: ``x[N,H]``, ``ctx[N,H]`` -> (``x'[N,H]``, new state)."""
        y, c = lstm_step(self.lstm, torch.cat((x, ctx), dim=-1), state)
        return (y + x if self.residual else y), (y, c)


class Generator(nn.Module):
    """Stage ``Generator``: Linear H->V (weight tied to the embedding when requested).

    (h_dec[Tt,B,H], ctx[Tt,B,H]) -> logits[Tt,B,V]

    ctx does not change the logits. When ctx requires grad (training, also as a received
    pipeline activation) it is kept in the autograd graph by adding the sum of an empty slice
    of it (exactly 0.0) to the bias: the logits are bit-identical and ctx gets a zero gradient
    instead of none, so every float input of every stage reaches the output.
    """

    def __init__(self, hidden: int, vocab_size: int) -> None:
        super().__init__()
        self.name = "Generator"
        self.proj = nn.Linear(hidden, vocab_size)

    def start(self, prior: Tensor | None, embedding: nn.Embedding | None) -> None:
        """After the init: the bias at ``prior`` (``[V]`` log-probabilities, the unigram prior)
        when given; with ``embedding`` the weight *is* that Parameter (tied, one object)."""
        if prior is not None:
            if prior.shape != (self.proj.out_features,):
                raise ValueError(
                    f"output_prior has shape {tuple(prior.shape)}, expected "
                    f"({self.proj.out_features},)"
                )
            with torch.no_grad():
                self.proj.bias.copy_(prior)
        if embedding is not None:
            self.proj.weight = embedding.weight

    def shortlisted(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        """Output weights and biases of per-sentence id lists ``ids[B,S]`` (-1 = padding):
        ``(weight[B,S,H], bias[B,S])``, the padding's bias -inf (decoding with a shortlist,
        :mod:`nmt.decode.shortlist`)."""
        flat = ids.clamp(min=0).reshape(-1)
        full, full_bias = self.proj.weight, self.proj.bias  # Int8Linear: dequantized
        weight = full.index_select(0, flat).view(*ids.shape, -1)
        bias = full_bias.index_select(0, flat).view(ids.shape)
        return weight, bias.masked_fill(ids < 0, float("-inf"))

    @staticmethod
    def project(h: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        """Logits over each sentence's shortlist: ``h[B*K,H]`` (rows grouped by sentence),
        ``weight[B,S,H]``, ``bias[B,S]`` -> ``[B*K,S]``."""
        batch = weight.size(0)
        x = h.view(batch, -1, h.size(-1))  # [B, K, H]
        return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2)).view(h.size(0), -1)

    def forward(self, h_dec: Tensor, ctx: Tensor) -> Tensor:
        if ctx.requires_grad and torch.is_grad_enabled():
            bias = self.proj.bias + ctx[:0].sum()
            return nn.functional.linear(h_dec, self.proj.weight, bias)
        logits: Tensor = self.proj(h_dec)
        return logits
