"""Int8 inference modules whose output for a row depends on that row alone.

torch's dynamic quantization (``torch.ao.quantization.quantize_dynamic``) quantizes the
activations with one scale per call, taken from the whole batch: a sentence translates
differently alone and in a file. Here weights are quantized per output channel ahead of time
and activations per row at run time; the int8 product accumulates exactly in int32
(``torch._int_mm``), so every row's result is a function of that row only, bit for bit, and
the rounding error is smaller than with one scale per tensor.

``y[N,out] = (int8(x)[N,in] @ int8(W)^T[in,out]) * s_x[N,1] * s_w[1,out] + b``,
``s_x = max|x_row| / 127``, ``s_w = max|W_col| / L``, with ``L`` = :func:`weight_levels`:
127 where ``torch._int_mm`` is exact over the whole int8 range, 63 where it is not. Without
VNNI (the AVX2 class), oneDNN's kernel adds pairs of u8 x s8 products in int16 with
saturation (the s8 activations shifted to u8 by +128), so full-range weights give wrong sums;
with |w| <= 63 a pair is at most 2 * 255 * 63 = 32,130 and every product is exact again.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

_EPS = 1e-12


def quantize_rows(x: Tensor, levels: int = 127) -> tuple[Tensor, Tensor]:
    """``x[N,K]`` float -> (``int8[N,K]`` in [-levels, levels], ``scale[N,1]``): symmetric,
    one scale per row."""
    scale = x.abs().amax(dim=-1, keepdim=True).clamp(min=_EPS) / float(levels)
    return torch.round(x / scale).to(torch.int8), scale


def int8_matmul(x: Tensor, w_t: Tensor, w_scale: Tensor, bias: Tensor | None = None) -> Tensor:
    """``x[N,K]`` float times the quantized ``w_t[K,M]`` (int8, scales ``w_scale[M]``), plus
    ``bias[M]`` -> ``[N,M]`` float32."""
    if x.size(0) == 0:
        return x.new_zeros(0, w_t.size(1))
    xq, x_scale = quantize_rows(x.contiguous())
    y = torch._int_mm(xq, w_t).to(torch.float32).mul_(x_scale)
    return y.mul_(w_scale) if bias is None else torch.addcmul(bias, y, w_scale)


@functools.cache
def weight_levels() -> int:
    """The largest |int8 weight| for which ``torch._int_mm`` is exact here: 127, or 63 where a
    worst case (every activation 127, every weight 127) comes out wrong. Probed once."""
    a = torch.full((32, 64), 127, dtype=torch.int8)
    b = torch.full((64, 32), 127, dtype=torch.int8)
    exact = torch.full((32, 32), 64 * 127 * 127, dtype=torch.int32)
    return 127 if torch.equal(torch._int_mm(a, b), exact) else 63


def _quantize_weight(weight: Tensor, levels: int) -> tuple[Tensor, Tensor]:
    """``weight[M,K]`` float -> (``w_t[K,M]`` int8 in [-levels, levels], contiguous;
    ``scale[M]``)."""
    wq, scale = quantize_rows(weight.detach().to(torch.float32), levels)
    return wq.t().contiguous(), scale.squeeze(1)


class Int8Linear(nn.Module):
    """``nn.Linear`` in int8 (per-channel weights, per-row activations); ``x[...,in]``."""

    w_t: Tensor  # [in, out] int8
    w_scale: Tensor  # [out]
    bias: Tensor | None  # [out]

    def __init__(self, linear: nn.Linear, levels: int = 127) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        w_t, scale = _quantize_weight(linear.weight, levels)
        self.register_buffer("w_t", w_t)
        self.register_buffer("w_scale", scale)
        bias = None if linear.bias is None else linear.bias.detach().to(torch.float32).clone()
        self.register_buffer("bias", bias)

    @property
    def weight(self) -> Tensor:
        """The dequantized weight ``[out, in]`` float32 (e.g. for a shortlist's rows)."""
        return (self.w_t.t().to(torch.float32) * self.w_scale.unsqueeze(1)).contiguous()

    def forward(self, x: Tensor) -> Tensor:
        y = int8_matmul(x.reshape(-1, self.in_features), self.w_t, self.w_scale, self.bias)
        return y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per row"


class Int8LSTM(nn.Module):
    """A single-layer unidirectional ``nn.LSTM`` (with biases) in int8, for decoders: one
    product per step over ``cat(x, h)``; the gates and the cell in float32.

    ``forward(x[T,B,in], (h0, c0)[1,B,H] | None) -> (out[T,B,H], (h_n, c_n)[1,B,H])`` as
    ``nn.LSTM``; :meth:`step` advances one time step on ``[B,...]`` tensors.
    """

    w_t: Tensor  # [in + H, 4H] int8
    w_scale: Tensor  # [4H]
    bias: Tensor  # [4H], b_ih + b_hh

    def __init__(self, lstm: nn.LSTM, levels: int = 127) -> None:
        super().__init__()
        if lstm.num_layers != 1 or lstm.bidirectional or not lstm.bias or lstm.proj_size:
            raise ValueError("Int8LSTM needs a single-layer unidirectional LSTM with biases")
        self.input_size, self.hidden_size = lstm.input_size, lstm.hidden_size
        w_ih, w_hh, b_ih, b_hh = (t.detach() for t in lstm.all_weights[0])
        w_t, scale = _quantize_weight(torch.cat((w_ih, w_hh), dim=1), levels)  # [in+H, 4H]
        self.register_buffer("w_t", w_t)
        self.register_buffer("w_scale", scale)
        self.register_buffer("bias", (b_ih + b_hh).to(torch.float32))

    def step(self, x: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """``x[B,in]``, ``(h, c)[B,H]`` -> ``(h', c')[B,H]`` (gate order i, f, g, o)."""
        h, c = state
        gates = int8_matmul(torch.cat((x, h), dim=-1), self.w_t, self.w_scale, self.bias)
        i, f, g, o = gates.chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c

    def forward(
        self, x: Tensor, state: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        if state is None:
            zeros = x.new_zeros(x.size(1), self.hidden_size, dtype=torch.float32)
            h, c = zeros, zeros
        else:
            h, c = state[0].squeeze(0), state[1].squeeze(0)
        outs = []
        for t in range(x.size(0)):
            h, c = self.step(x[t], (h, c))
            outs.append(h)
        out = torch.stack(outs) if outs else x.new_zeros(0, x.size(1), self.hidden_size)
        return out, (h.unsqueeze(0), c.unsqueeze(0))


def quantize_modules(root: nn.Module, levels: int | None = None) -> None:
    """Replace in place every ``nn.Linear`` under ``root`` by :class:`Int8Linear`, and every
    unidirectional ``nn.LSTM`` whose owner has a ``step`` method (a decoder stage: it runs once
    per output token and beam) by :class:`Int8LSTM`. Encoder LSTMs stay float: they run once
    per sentence, on the fused kernel."""
    levels = weight_levels() if levels is None else levels
    for owner in list(root.modules()):
        for name, child in list(owner.named_children()):
            if type(child) is nn.Linear:
                setattr(owner, name, Int8Linear(child, levels))
            elif type(child) is nn.LSTM and not child.bidirectional and hasattr(owner, "step"):
                setattr(owner, name, Int8LSTM(child, levels))
