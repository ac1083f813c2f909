"""Faults: SIGKILL during training (short version of ``python -m scripts.bench fault_train``),
non-finite losses, a full disk and unwritable output folders. The previous checkpoint or output
file must survive every one of them."""

from __future__ import annotations

import errno
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import nmt.train.single as single_mod
import nmt.train.trainer as train_mod
from nmt.checkpoint import files as ckpt_io
from nmt.errors import UserError
from nmt.train import setup as faults
from nmt.train.run import train
from scripts.bench import fault_train

ROOT = Path(__file__).resolve().parent.parent


def records(out_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (out_dir / "metrics.jsonl").read_text().splitlines() if x]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return ckpt_io.load(path)["model"]  # type: ignore[no-any-return]


# ------------------------------------------------------------------------------ SIGKILL
@pytest.mark.timeout(240)
def test_sigkill_during_training_then_resume_is_exact(tmp_path: Path) -> None:
    """3 kills (at start-up, inside a step, inside a checkpoint write), resumed each time:
    no checkpoint is ever unreadable and the result equals an uninterrupted run bit for bit."""
    s = fault_train.run(kills=3, seed=1, workdir=tmp_path, verbose=False)
    assert s["kills"] == 3 and not s["finished_early"], s
    assert sorted(r["kind"] for r in s["records"]) == ["startup", "step", "write"]
    assert s["kills_inside_checkpoint_write"] >= 1, s["records"]
    assert s["corrupted_checkpoints"] == 0 and s["checkpoint_files_checked"] > 0
    assert s["last_pt_went_back"] == 0
    assert s["final_exit_code"] == 0 and s["final_step"] == s["max_steps"]
    assert s["final_resumed"] and s["resumes"] >= 1
    assert s["weights_equal"] and s["optimizer_equal"] and s["losses_equal"]
    assert s["ok"]


# ------------------------------------------------------------------- non-finite losses
def nan_loss_at(monkeypatch: pytest.MonkeyPatch, bad: Any) -> list[int]:
    """Make the loss NaN whenever ``bad(step)``; returns the list of poisoned steps."""
    real = single_mod.label_smoothed_nll
    hits: list[int] = []
    state = {"step": 0}

    def poisoned(*args: Any, **kw: Any) -> Any:
        loss, nll = real(*args, **kw)
        if bad(state["step"]):
            hits.append(state["step"])
            return loss * float("nan"), nll
        return loss, nll

    real_step = train_mod.Trainer.train_step

    def step(self: Any, batch: Any) -> Any:
        state["step"] = self.step
        return real_step(self, batch)

    monkeypatch.setattr(single_mod, "label_smoothed_nll", poisoned)
    monkeypatch.setattr(train_mod.Trainer, "train_step", step)
    return hits


def test_nonfinite_loss_is_skipped_and_counted(
    tiny_cfg: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: set[int] = set()

    def bad(step: int) -> bool:  # the first attempt at steps 3 and 5 gives NaN
        hit = step in (3, 5) and step not in seen
        seen.add(step)
        return hit

    hits = nan_loss_at(monkeypatch, bad)
    cfg = tiny_cfg("train.max_steps=8", "train.save_every=1")
    result = train(cfg)
    out = Path(cfg.train.out_dir)
    assert hits == [3, 5] and result["step"] == 8 and result["skipped_steps"] == 2
    recs = records(out)
    assert [r["step"] for r in recs if "loss" in r] == list(range(1, 9))  # no NaN losses logged
    assert [r for r in recs if "skipped_nonfinite" in r] == [
        {"step": 3, "skipped_nonfinite": 1},
        {"step": 5, "skipped_nonfinite": 2},
    ]
    ck = ckpt_io.load(out / "checkpoints" / "last.pt")
    assert ck["skipped_steps"] == 2
    assert all(torch.isfinite(t).all() for t in ck["model"].values())


def test_nonfinite_loss_does_not_touch_the_weights(
    tiny_cfg: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A skipped step leaves weights and optimizer exactly as they were."""
    from nmt.prepare.splits import prepare_corpus

    cfg = tiny_cfg("train.max_steps=1")
    corpus = prepare_corpus(cfg.data, 1)
    t = single_mod.one_device_trainer(cfg, corpus, Path(cfg.train.out_dir))
    model = t.engine.model  # type: ignore[attr-defined]
    batch = next(iter(t.batcher))
    t.train_step(batch)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt_before = {k: v["exp_avg"].clone() for k, v in t.optimizer.state_dict()["state"].items()}
    nan_loss_at(monkeypatch, lambda step: True)
    loss, _ = t.train_step(batch)
    assert loss != loss and t.step == 1 and t.bad_steps == 1 and t.skipped_last
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    opt_after = t.optimizer.state_dict()["state"]
    assert all(torch.equal(opt_before[k], opt_after[k]["exp_avg"]) for k in opt_before)


def test_too_many_nonfinite_losses_stop_with_last_good_checkpoint(
    tiny_cfg: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """From step 4 on every loss is NaN: after train.max_bad_steps in a row the run stops
    (one line, exit 2) and last.pt is the good step-4 checkpoint, untouched."""
    from nmt.cli import _guarded

    cfg = tiny_cfg("train.max_steps=20", "train.save_every=2", "train.max_bad_steps=3")
    hits = nan_loss_at(monkeypatch, lambda step: step >= 4)
    last = Path(cfg.train.out_dir) / "checkpoints" / "last.pt"
    with pytest.raises(SystemExit) as stop:
        _guarded(train, cfg, "nmt-train")
    assert stop.value.code == 2 and hits == [4, 4, 4]
    lines = capsys.readouterr().err.strip().splitlines()
    err = lines[-1]
    assert [x for x in lines if "error" in x] == [err]
    assert err.startswith("nmt-train: error: 3 non-finite steps in a row at step 4")
    assert "train.max_bad_steps=3" in err and f"last good checkpoint: {last}" in err
    ck = ckpt_io.load(last)
    assert ck["step"] == 4 and all(torch.isfinite(t).all() for t in ck["model"].values())
    assert not list(last.parent.glob(".*.tmp"))


def test_nonfinite_losses_before_any_checkpoint_say_so(
    tiny_cfg: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    nan_loss_at(monkeypatch, lambda step: True)
    with pytest.raises(UserError, match=r"2 non-finite steps in a row at step 0 .*no checkpoint"):
        train(tiny_cfg("train.max_steps=5", "train.max_bad_steps=2"))


# ------------------------------------------------------------------ disk full / unwritable
def enospc(*_: Any, **__: Any) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_while_saving_keeps_the_previous_checkpoint(
    tiny_cfg: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The disk fills up in the middle of writing a checkpoint: one-line error, exit 2, the
    previous last.pt byte for byte as it was, no temp file left behind."""
    from nmt.cli import _guarded

    train(tiny_cfg("train.max_steps=2", "train.save_every=2"))
    cfg = tiny_cfg("train.max_steps=4", "train.save_every=2", "train.resume=auto")
    ckpt_dir = Path(cfg.train.out_dir) / "checkpoints"
    before = {p.name: p.read_bytes() for p in ckpt_dir.iterdir()}
    real_save = torch.save

    def half_then_full(obj: Any, f: Any, *a: Any, **kw: Any) -> None:
        real_save(obj, f, *a, **kw)
        f.truncate(f.tell() // 2)  # half of it made it to disk, then the device was full
        enospc()

    monkeypatch.setattr(ckpt_io.torch, "save", half_then_full)
    with pytest.raises(SystemExit) as stop:
        _guarded(train, cfg, "nmt-train")
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and [x for x in err if "error" in x] == err[-1:]
    assert err[-1].startswith("nmt-train: error: cannot write checkpoint ")
    assert "No space left on device" in err[-1] and "Traceback" not in "".join(err)
    after = {p.name: p.read_bytes() for p in ckpt_dir.iterdir()}
    assert after == before  # every earlier checkpoint untouched, no temp files
    assert ckpt_io.load(ckpt_dir / "last.pt")["step"] == 2


def test_disk_full_while_translating_keeps_the_old_output(
    tiny_cfg: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nmt.config import compose_config
    from nmt.decode.command import translate_cli

    cfg = tiny_cfg("train.max_steps=1")
    train(cfg)
    src, out = tmp_path / "in.txt", tmp_path / "out.txt"
    src.write_text("the cat\na dog\n")
    out.write_text("OLD\n")
    tcfg = compose_config(
        [f"checkpoint={cfg.train.out_dir}/checkpoints/last.pt", f"input={src}", f"output={out}",
         "decode=greedy"], config_name="tool",
    )  # fmt: skip
    import data.atomic

    monkeypatch.setattr(data.atomic.os, "fsync", enospc)
    with pytest.raises(UserError, match=r"cannot write output .*out.txt: No space left on device"):
        translate_cli(tcfg)
    assert out.read_text() == "OLD\n" and not list(tmp_path.glob(".*.tmp"))


def test_disk_full_while_writing_the_eval_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nmt.config import compose_config
    from nmt.decode.evaluate import eval_cli

    hyp, ref = tmp_path / "hyp.txt", tmp_path / "ref.txt"
    hyp.write_text("das Haus\n")
    ref.write_text("das Haus\n")
    report = tmp_path / "hyp.txt.eval.json"
    report.write_text("{}\n")
    cfg = compose_config([f"hyp={hyp}", f"ref={ref}"], config_name="tool")
    monkeypatch.setattr("os.replace", enospc)
    with pytest.raises(UserError, match="cannot write .*eval.json: No space left on device"):
        eval_cli(cfg)
    assert report.read_text() == "{}\n" and not list(tmp_path.glob(".*.tmp"))


def test_unwritable_run_folder_is_one_line(tiny_cfg: Any, tmp_path: Path) -> None:
    """Tests run as root (chmod does not stop root): a run folder below a regular file."""
    blocker = tmp_path / "file.txt"
    blocker.write_text("keep\n")
    cfg = tiny_cfg("train.max_steps=1", f"train.out_dir={blocker / 'run'}")
    with pytest.raises(
        UserError, match=r"cannot create run folder .*file.txt/run: Not a directory"
    ):
        train(cfg)
    assert blocker.read_text() == "keep\n"


def test_unwritable_checkpoint_folder_keeps_last(
    tiny_cfg: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checkpoint folder becomes unwritable (read-only file system) mid-run."""
    cfg = tiny_cfg("train.max_steps=2", "train.save_every=1")
    train(cfg)
    ckpt_dir = Path(cfg.train.out_dir) / "checkpoints"
    before = (ckpt_dir / "last.pt").read_bytes()

    import data.atomic

    real_mkstemp = data.atomic.tempfile.mkstemp

    def read_only(*a: Any, dir: Any = None, **kw: Any) -> Any:  # noqa: A002 (mkstemp's name)
        if Path(dir) == ckpt_dir:
            raise OSError(errno.EROFS, "Read-only file system")
        return real_mkstemp(*a, dir=dir, **kw)

    monkeypatch.setattr(data.atomic.tempfile, "mkstemp", read_only)
    with pytest.raises(UserError, match="cannot write checkpoint .*Read-only file system"):
        train(tiny_cfg("train.max_steps=3", "train.save_every=1", "train.resume=auto"))
    assert (ckpt_dir / "last.pt").read_bytes() == before


# ------------------------------------------------------------------- environment errors
def test_other_os_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """An OSError that reaches a command (permission, I/O ...) is one line and exit 2."""
    from nmt.cli import _guarded

    def fails(cfg: Any) -> None:
        open("/nonexistent-folder/x.txt", "w")  # noqa: SIM115

    with pytest.raises(SystemExit) as stop:
        _guarded(fails, None, "nmt-x")  # type: ignore[arg-type]
    assert stop.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "nmt-x: error: No such file or directory: /nonexistent-folder/x.txt"
    ]


@pytest.mark.timeout(120)
def test_reader_going_away_is_a_quiet_exit(tiny_cfg: Any) -> None:
    """``nmt-translate ... | head``: the closed pipe ends the command quietly (status 141)."""
    import subprocess

    cfg = tiny_cfg("train.max_steps=1")
    train(cfg)
    code = "import sys; from nmt.cli import translate_main as m; sys.argv[0] = 'nmt-translate'; m()"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, f"checkpoint={cfg.train.out_dir}/checkpoints/last.pt",
         "decode=greedy", "decode.max_len_a=0", "decode.max_len_b=1", "train.threads=1"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stdin is not None
    proc.stdout.close()  # the reader is gone before the first line
    _, err = proc.communicate(b"the cat\n" * 4100, timeout=100)
    assert proc.returncode == 141, err.decode()[-2000:]
    assert b"Traceback" not in err and b"BrokenPipe" not in err


def test_nonfinite_gradient_with_a_finite_loss_is_skipped(
    tiny_cfg: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gradient-norm guard: NaN gradients at step 3 (finite loss) skip that update."""
    monkeypatch.setenv(faults.INJECT_ENV, "3@0")
    cfg = tiny_cfg("train.max_steps=5")
    result = train(cfg)
    assert result["step"] == 5 and result["skipped_steps"] == 1
    recs = records(Path(cfg.train.out_dir))
    assert [r for r in recs if "skipped_nonfinite" in r] == [{"step": 3, "skipped_nonfinite": 1}]
    ck = ckpt_io.load(Path(cfg.train.out_dir) / "checkpoints" / "last.pt")
    assert all(torch.isfinite(t).all() for t in ck["model"].values())
