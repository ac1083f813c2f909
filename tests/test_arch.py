"""The model interface (nmt/models/seq2seq.py, nmt/models/registry.py), the same checks for every
registered
architecture: config, stage contract, search against a full-recompute reference, n-best scores
against teacher forcing, pipelined training against one device, export and re-place, and
translation through ``nmt-translate``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from nmt.checkpoint import files as ckpt_io
from nmt.config import ModelConfig, compose_config
from nmt.decode.search import Pruning, SearchSettings, beam_search
from nmt.errors import UserError
from nmt.models import registry as arch
from nmt.models.seq2seq import ModelSpec, Seq2Seq
from nmt.train.build import check_model_config
from tests.conftest import tiny_overrides

ARCHS = sorted(arch.ARCHS)
V, PAD, BOS, EOS = 40, 0, 2, 3
CONF = Path(__file__).resolve().parent.parent / "conf" / "model"


def tiny(name: str, seed: int = 0) -> Seq2Seq:
    torch.manual_seed(seed)
    spec = ModelSpec(arch=name, hidden=16, enc_layers=2, dec_layers=2, dropout=0.0, heads=4)
    model = arch.build_model(spec, V, PAD).double().eval()
    with torch.no_grad():  # large random weights: outputs that depend on the context
        for p in model.parameters():
            p.normal_(0.0, 0.7)
        model.generator.proj.bias[EOS] += 1.0
    return model


def source(lengths: list[int], seed: int = 1) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, V, (max(lengths), len(lengths)), generator=g)
    for b, n in enumerate(lengths):
        src[n - 1, b] = EOS
        src[n:, b] = PAD
    return src, torch.tensor(lengths)


def test_every_architecture_has_a_config_that_builds() -> None:
    for name in ARCHS:
        files = [p for p in CONF.glob("*.yaml") if f"arch: {name}" in p.read_text()]
        if name == "gnmt":  # the schema default: GNMT configs need not say it
            files = list(CONF.glob("gnmt*.yaml"))
        assert files, f"no conf/model/*.yaml for arch {name}"
        for path in files:
            cfg = compose_config([f"model={path.stem}"]).model
            spec = check_model_config(cfg)
            assert spec.arch == name
    spec = check_model_config(compose_config(["model=transformer_small"]).model)
    stages = arch.build_stages(spec, 50)
    assert [s.name for s in stages] == arch.stage_names(spec)
    assert type(arch.build_model(spec, 50)).arch == "transformer"


@pytest.mark.parametrize("name", ARCHS)
def test_analytic_costs_have_the_model_stages(name: str) -> None:
    """The planner's cost table of each architecture names exactly the model's stages, and its
    parameter bytes are the stages' own (tied embedding counted in both places)."""
    spec = ModelSpec(arch=name, hidden=16, enc_layers=2, dec_layers=2, heads=4)
    table = arch.analytic_costs(spec, V, 8, 10, 16, 4, 1e9, 1e-6)
    stages = arch.build_stages(spec, V)
    assert [s.name for s in table.stages] == arch.stage_names(spec) == [s.name for s in stages]
    for cost, stage in zip(table.stages, stages, strict=True):
        assert cost.param_bytes == 4 * sum(p.numel() for p in stage.parameters()), stage.name


def test_unknown_or_impossible_models_are_one_line_errors() -> None:
    base = {"hidden": 16, "enc_layers": 2, "dec_layers": 2, "dropout": 0.1, "heads": 4}
    with pytest.raises(UserError, match=r"model.arch='rnn'.*gnmt, transformer"):
        check_model_config(ModelConfig(name="x", arch="rnn", **base))
    with pytest.raises(UserError, match="divisible by model.heads=3"):
        check_model_config(ModelConfig(name="x", arch="transformer", **(base | {"heads": 3})))
    with pytest.raises(UserError, match="enc_layers=1 must be >= 2"):
        check_model_config(ModelConfig(name="x", arch="gnmt", **(base | {"enc_layers": 1})))


@pytest.mark.parametrize("name", ARCHS)
def test_stage_chain_is_the_model(name: str) -> None:
    model = tiny(name)
    src, src_len = source([6, 3, 1])
    tgt_in = torch.randint(4, V, (5, 3))
    x: tuple[Tensor, ...] = (src, src_len, tgt_in)
    for stage in model.stages:
        out = stage(*x)
        x = out if isinstance(out, tuple) else (out,)
        assert all(t.is_contiguous() for t in x)
    torch.testing.assert_close(x[0], model(src, src_len, tgt_in), rtol=0, atol=0)
    assert x[0].shape == (5, 3, V)


def full_recompute_greedy(model: Seq2Seq, src: Tensor, n: int, max_len: int) -> list[int]:
    """Greedy decoding of one sentence ``src[n,1]`` by re-running the whole model on each prefix (no
    incremental state, no memory): the independent reference of the search."""
    ys = [BOS]
    torch.set_grad_enabled(False)
    for step in range(max_len + 1):
        tgt_in = torch.tensor(ys).unsqueeze(1)
        logits = model(src, torch.tensor([n]), tgt_in)[-1, 0]
        logits[[PAD, BOS]] = float("-inf")
        tok = EOS if step == max_len else int(logits.argmax())
        if tok == EOS:
            break
        ys.append(tok)
    torch.set_grad_enabled(True)
    return ys[1:]


@pytest.mark.parametrize("name", ARCHS)
def test_beam_one_equals_full_recompute_greedy(name: str) -> None:
    model = tiny(name)
    lengths = [7, 4, 1, 5]
    src, src_len = source(lengths)
    hyps = beam_search(
        model, src, src_len, SearchSettings(1, alpha=0.0, beta=0.0, max_len=(1.0, 3))
    )
    for b, n in enumerate(lengths):
        ref = full_recompute_greedy(model, src[:n, b : b + 1], n, n + 3)
        assert hyps[b][0].tokens == ref, (b, hyps[b][0].tokens, ref)


@pytest.mark.parametrize("name", ARCHS)
def test_nbest_scores_are_teacher_forced_log_probabilities(name: str) -> None:
    """Every hypothesis's logprob equals the sum of the model's own log P(token) over its tokens
    and eos, computed by one teacher-forced forward pass."""
    model = tiny(name, seed=3)
    lengths = [6, 2, 4]
    src, src_len = source(lengths, seed=5)
    hyps = beam_search(model, src, src_len, SearchSettings(4, beta=0.0, max_len=(1.0, 4), nbest=3))
    checked = 0
    torch.set_grad_enabled(False)
    for b, n in enumerate(lengths):
        assert len(hyps[b]) == 3
        for h in hyps[b]:
            tgt = torch.tensor([BOS, *h.tokens]).unsqueeze(1)
            logp = torch.log_softmax(model(src[:n, b : b + 1], src_len[b : b + 1], tgt), dim=-1)
            gold = [*h.tokens, EOS]
            total = sum(float(logp[t, 0, y]) for t, y in enumerate(gold))
            assert h.logprob == pytest.approx(total, abs=1e-9)
            checked += 1
    torch.set_grad_enabled(True)
    assert checked == 9


@pytest.mark.parametrize("name", ARCHS)
def test_pruned_batch_equals_each_sentence_alone(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Beam pruning leaves sentences with different numbers of rows, so the memory is laid out
    per row (``Memory.for_rows``): each sentence still gets exactly its translation alone."""
    model = tiny(name, seed=4)
    lengths = [6, 2, 7, 4, 5]
    src, src_len = source(lengths, seed=9)
    prune = Pruning(0.3, 0.0)
    memory_type = type(model.prepare_memory(model.encode(src, src_len), src_len))
    laid_out: list[int] = []
    for_rows = memory_type.for_rows
    monkeypatch.setattr(
        memory_type, "for_rows", lambda m, rows: laid_out.append(rows.numel()) or for_rows(m, rows)
    )
    settings = SearchSettings(4, 0.6, 0.0, (1.0, 4), 2, prune)
    hyps = beam_search(model, src, src_len, settings)
    assert laid_out, "pruning never gave sentences different row counts"
    for b, n in enumerate(lengths):
        alone = beam_search(model, src[:n, b : b + 1], src_len[b : b + 1], settings)
        assert [h.tokens for h in hyps[b]] == [h.tokens for h in alone[0]], b
        for x, y in zip(hyps[b], alone[0], strict=True):
            assert x.logprob == pytest.approx(y.logprob, abs=1e-5)


# ------------------------------------------------------------------ through the commands
TRANSFORMER = (
    "model=transformer_small",
    "model.hidden=16",
    "model.heads=4",
    "model.ffn=32",
    "model.enc_layers=2",
    "model.dec_layers=2",
    "model.dropout=0.0",
    "train.warmup_steps=0",
    "train.decay_steps=0",
    "parallel.microbatches=2",
)


def cli(entry: str, *args: str) -> subprocess.CompletedProcess[str]:
    code = f"import sys; from nmt.cli import {entry}; sys.argv[0] = '{entry}'; {entry}()"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=280
    )


def losses(out: Path) -> list[float]:
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in recs if "loss" in r]


@pytest.fixture(scope="module")
def transformer_runs(
    tiny_corpus: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """One device through ``nmt-train`` itself; the same run pipelined over two ranks; each
    exported checkpoint resumed on one device for two more steps (re-placed)."""
    tmp = tmp_path_factory.mktemp("transformer")

    def run(name: str, *extra: str) -> Path:
        args = tiny_overrides(tiny_corpus, tmp / "cache", tmp / name) + [*TRANSFORMER, *extra]
        r = cli("train_main", *args)
        assert r.returncode == 0, r.stderr[-3000:]
        return tmp / name

    pipe = ("parallel=pipe2", "parallel.microbatches=2", "parallel.timeout_s=60")
    runs = {
        "single": run("single", "train.max_steps=4"),
        "pipe": run("pipe", "train.max_steps=4", *pipe),
    }
    # the pipelined run exports weights only (no optimizer state, no data position): give the
    # one-device run's checkpoint the same keys, then both resume the same way on one device
    export = ckpt_io.load(runs["pipe"] / "checkpoints" / "last.pt")
    single = ckpt_io.load(runs["single"] / "checkpoints" / "last.pt")
    assert "optimizer" not in export and "optimizer" in single
    ckpt_io.save(tmp / "single_weights.pt", {k: single[k] for k in export if k != "format"})
    starts = {"single": tmp / "single_weights.pt", "pipe": runs["pipe"] / "checkpoints" / "last.pt"}
    for name, path in starts.items():
        runs[f"{name}+2"] = run(f"{name}_more", "train.max_steps=6", f"train.resume={path}")
    return runs


def test_transformer_pipelined_training_equals_one_device(transformer_runs: Any) -> None:
    single, pipe = transformer_runs["single"], transformer_runs["pipe"]
    assert len(losses(single)) == 4
    assert losses(pipe) == pytest.approx(losses(single), rel=1e-5)
    wa = ckpt_io.load(single / "checkpoints" / "last.pt")["model"]
    wb = ckpt_io.load(pipe / "checkpoints" / "last.pt")["model"]
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=2e-5, msg=k)


def test_transformer_export_resumes_on_another_placement(transformer_runs: Any) -> None:
    """The pipelined run's exported ``last.pt`` (weights, step, clock) goes on on one device
    like the one-device run's weights do (the schedule goes on from step 4)."""
    a, b = losses(transformer_runs["single+2"]), losses(transformer_runs["pipe+2"])
    assert len(a) == 2
    assert b == pytest.approx(a, rel=1e-4)


def test_transformer_translates_through_nmt_translate(
    transformer_runs: Any, tmp_path: Path
) -> None:
    lines = ["the cat runs", "", "a big red dog sleeps", "window"]
    src = tmp_path / "in.txt"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    outs = []
    for name in ("single", "pipe"):
        out = tmp_path / f"{name}.txt"
        last = transformer_runs[name] / "checkpoints" / "last.pt"
        r = cli("translate_main", f"checkpoint={last}", f"input={src}", f"output={out}")
        assert r.returncode == 0, r.stderr[-3000:]
        outs.append(out.read_text(encoding="utf-8").split("\n"))
    assert len(outs[0]) == len(lines) + 1 and outs[0][-1] == ""  # lines in == lines out
    assert outs[0][1] == ""  # an empty line stays empty
    assert outs[0] == outs[1]  # the pipelined run's export translates like the one-device run
