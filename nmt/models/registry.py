"""The architecture registry: ``model.arch`` -> how to build that model (:class:`Arch`).

Adding an architecture = one model module that defines its stages, its :class:`Seq2Seq` and an
``ARCH`` entry, one ``conf/model/*.yaml``, and one line below.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from nmt.models import gnmt, transformer
from nmt.models.seq2seq import Arch, ModelSpec, Seq2Seq

ARCHS: dict[str, Arch] = {
    "gnmt": gnmt.ARCH,
    "transformer": transformer.ARCH,
}

__all__ = ["ARCHS", "build_model", "build_stages", "get", "problems", "stage_names"]


def get(spec: ModelSpec) -> Arch:
    """The registry entry of ``spec.arch``; an unknown name is a ValueError naming the known."""
    try:
        return ARCHS[spec.arch]
    except KeyError:
        raise ValueError(
            f"model.arch={spec.arch!r} is not an architecture; known: {', '.join(sorted(ARCHS))}"
        ) from None


def problems(spec: ModelSpec) -> list[str]:
    """Impossible settings of ``spec`` (empty when it can be built)."""
    if spec.arch not in ARCHS:
        return [f"model.arch={spec.arch!r}: expected one of {', '.join(sorted(ARCHS))}"]
    return ARCHS[spec.arch].problems(spec)


def stage_names(spec: ModelSpec) -> list[str]:
    return get(spec).stage_names(spec)


def build_stages(
    spec: ModelSpec, vocab_size: int, pad_id: int = 0, prior: Tensor | None = None
) -> list[nn.Module]:
    """The pipeline stages of ``spec`` (seeded by the caller's ``torch.manual_seed``)."""
    return get(spec).stages(spec, vocab_size, pad_id, prior)


def build_model(
    spec: ModelSpec, vocab_size: int, pad_id: int = 0, prior: Tensor | None = None
) -> Seq2Seq:
    """:func:`build_stages` wrapped in the architecture's single-device :class:`Seq2Seq`."""
    return get(spec).model(build_stages(spec, vocab_size, pad_id, prior))


def analytic_costs(spec: ModelSpec, vocab: int, *args: Any, **kw: Any) -> Any:
    """The architecture's analytic cost table (:mod:`parallel.planning.costs`)."""
    costs = get(spec).costs
    if costs is None:
        raise ValueError(f"model.arch={spec.arch} has no analytic cost model")
    return costs(spec, vocab, *args, **kw)
