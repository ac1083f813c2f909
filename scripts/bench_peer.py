"""Peer comparison: pipenmt's gnmt_small against Joey NMT 2.3.0's RNN encoder-decoder (CPU).

    python scripts/bench_peer.py [--minutes 8] [--batch-tokens 2048] [--threads 2]
                                 [--test-limit 0] [--dev-limit 1000] [--out outputs/bench]

Same machine, same run, one after the other: the embedded corpus (``data/corpus``, filtered by
``nmt.corpus.load_text``), the same sentencepiece model (exported from our checkpoint for Joey
NMT), the same token batch size (padded ``max(Ts, Tt) * B`` positions in both), the same thread
count, a matched model size (both parameter counts are reported) and the same wall-clock
training budget (validation included in both). Measured: training target tokens/s (validation
time excluded), dev and test BLEU/chrF (sacrebleu, beam 5, GNMT length penalty 0.6 in both),
beam-5 translation sentences/s on the test split, peak resident memory (VmHWM) of each training
process. Writes ``bleu_vs_time.png``, ``loss_curves.png``, ``peer.json`` into ``--out`` and
prints a final JSON line with the ratios (ours / Joey NMT).

Joey NMT runs in its own virtual environment, ``~/.cache/pipenmt/peer-venv``, built on first use
with ``--system-site-packages`` so that it uses this machine's torch (checked), with
``pip install --no-deps joeynmt==2.3.0`` plus the dependencies it imports (sentencepiece 0.2.0,
importlib_metadata, tensorboard, sacremoses, subword-nmt). If that cannot be built the script
says so and exits with status 3 before training anything.

Joey NMT 2.3.0 on torch 2.13: its ``plateau`` scheduler fails (``verbose`` argument) and
``decaying`` silently uses step size 1, so it trains with ``scheduling: exponential`` and
``decrease_factor: 1.0`` (a constant rate, our peak rate 2e-3). It has no time budget: this
script runs its trainer in-process (``--joey-train``, inside the venv) and stops it after the
budget, validating at 50 % and 100 % of it on ``--peer-val-sentences`` dev sentences (our run
validates every ``train.eval_every`` steps, sized from the budget to give about four points, on
``--val-sentences``).  A recovery run can keep a finished run of ours: ``--reuse-ours``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("PIPENMT_CACHE", "~/.cache/pipenmt")).expanduser()
VENV = CACHE / "peer-venv"
JOEY = "joeynmt==2.3.0"
# what joeynmt 2.3.0 imports at train/test time that a torch environment may lack; its other
# Requires-Dist entries (pylint, yapf, flake8, plotly, seaborn, ...) are dev/plot tools it
# does not import on these paths, and `torch` must not be re-installed.
JOEY_DEPS = [
    "sentencepiece==0.2.0",
    "importlib_metadata",
    "tensorboard",
    "sacremoses",
    "subword-nmt",
]
SECS_PER_STEP_OURS = 1.7  # gnmt_small, 2,048-token batches, 2 vCPUs (README, `make demo`)


# --------------------------------------------------------------------------- peer environment


def venv_python() -> Path:
    return VENV / "bin" / "python"


def venv_ok() -> tuple[bool, str]:
    py = venv_python()
    if not py.exists():
        return False, f"{py} missing"
    code = (
        "import json, torch, sentencepiece, joeynmt, importlib.metadata as m;"
        "print(json.dumps({'torch': torch.__version__, 'torch_file': torch.__file__,"
        "'spm': sentencepiece.__version__, 'joeynmt': m.version('joeynmt')}))"
    )
    r = subprocess.run([str(py), "-c", code], capture_output=True, text=True)
    if r.returncode != 0:
        return False, r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "import failed"
    info = json.loads(r.stdout.strip().splitlines()[-1])
    import torch

    if info["torch"] != torch.__version__ or Path(info["torch_file"]) != Path(torch.__file__):
        return False, f"venv torch {info['torch']} at {info['torch_file']} is not this torch"
    if info["joeynmt"] != "2.3.0" or info["spm"] != "0.2.0":
        return False, f"venv has joeynmt {info['joeynmt']}, sentencepiece {info['spm']}"
    return True, json.dumps(info)


def link_parent_site(venv: Path) -> Path:
    """Make the running interpreter's packages (its torch) visible inside ``venv``, after the
    venv's own: ``--system-site-packages`` only exposes the *base* interpreter's, so from
    inside the project's virtual environment the peer would not see its torch."""
    import site
    import sysconfig

    paths = [*site.getsitepackages(), sysconfig.get_paths()["purelib"]]
    lib = next((venv / "lib").glob("python3*/site-packages"))
    pth = lib / "_pipenmt_parent.pth"
    pth.write_text("".join(f"{p}\n" for p in dict.fromkeys(paths)))
    return pth


def ensure_venv() -> str:
    ok, why = venv_ok()
    if ok:
        return why
    print(f"[peer] building {VENV} ({why})", file=sys.stderr)
    try:
        if not venv_python().exists():
            subprocess.run(
                [sys.executable, "-m", "venv", "--system-site-packages", str(VENV)], check=True
            )
        link_parent_site(VENV)
        pip = [str(venv_python()), "-m", "pip", "install", "-q"]
        subprocess.run([*pip, "--no-deps", JOEY], check=True)
        subprocess.run([*pip, *JOEY_DEPS], check=True)
    except (subprocess.CalledProcessError, OSError) as e:
        sys.exit(f"[peer] cannot build the Joey NMT environment in {VENV}: {e}")
    ok, why = venv_ok()
    if not ok:
        print(f"[peer] cannot use the Joey NMT environment in {VENV}: {why}", file=sys.stderr)
        sys.exit(3)
    return why


# --------------------------------------------------------------------------- process + memory


def run_watched(cmd: list[str], env: dict, log: Path) -> dict:
    """Run ``cmd``; poll its VmHWM (peak resident set) from /proc every 0.2 s."""
    t0 = time.perf_counter()
    with log.open("w") as f:
        p = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
        peak = 0

        def poll() -> None:
            nonlocal peak
            status = Path(f"/proc/{p.pid}/status")
            while p.poll() is None:
                try:
                    m = re.search(r"VmHWM:\s+(\d+) kB", status.read_text())
                    if m:
                        peak = max(peak, int(m.group(1)))
                except OSError:
                    pass
                time.sleep(0.2)

        th = threading.Thread(target=poll, daemon=True)
        th.start()
        rc = p.wait()
        th.join()
    if rc != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(True)[-25:])
        sys.exit(f"[peer] command failed ({rc}): {' '.join(cmd)}\n{tail}")
    return {"wall_s": round(time.perf_counter() - t0, 1), "peak_rss_mb": round(peak / 1024, 1)}


def thread_env(threads: int) -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


# --------------------------------------------------------------------------- ours


def train_ours(args: argparse.Namespace, out: Path) -> dict:
    run_dir = out / "ours"
    saved = run_dir / "bench_proc.json"
    if args.reuse_ours and saved.exists():  # recovery: keep a finished run of ours
        proc = json.loads(saved.read_text())
        eval_every = proc["eval_every"]
        return _ours_result(run_dir, proc, eval_every)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    steps = args.minutes * 60 / SECS_PER_STEP_OURS
    eval_every = args.eval_every or max(10, int(round(steps / 4 / 10)) * 10)
    exe = shutil.which("nmt-train")
    base = [exe] if exe else [sys.executable, "-c", "from nmt.cli import train_main; train_main()"]
    cmd = [
        *base,
        "model=gnmt_small",
        "train=demo",
        f"data.batch_tokens={args.batch_tokens}",
        f"data.max_dev_sentences={args.val_sentences}",
        f"train.max_minutes={args.minutes}",
        f"train.eval_every={eval_every}",
        f"train.threads={args.threads}",
        f"hydra.run.dir={run_dir}",
    ]
    print(f"[peer] ours: {' '.join(cmd[len(base) - 1 :])}", file=sys.stderr)
    proc = run_watched(cmd, thread_env(args.threads), out / "ours_train.log")
    saved.write_text(json.dumps({**proc, "eval_every": eval_every}))
    return _ours_result(run_dir, proc, eval_every)


def _ours_result(run_dir: Path, proc: dict, eval_every: int) -> dict:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x]
    steps_rows = [r for r in rows if "tok_per_s" in r]
    val_rows = [r for r in rows if "val_bleu" in r]
    # throughput without validation: a log window that follows a validation contains it
    val_steps = {r["step"] for r in val_rows}
    tok = sec = 0.0
    prev = 0
    for r in steps_rows:
        if not any(prev <= s < r["step"] for s in val_steps):
            tok += r["tokens"]
            sec += r["tokens"] / r["tok_per_s"]
        prev = r["step"]
    curve = []
    for v in val_rows:
        before = [r["wall_s"] for r in steps_rows if r["step"] <= v["step"]]
        curve.append(
            {
                "step": v["step"],
                "wall_s": round(max(before) if before else 0.0, 1),
                "dev_bleu_greedy": round(v["val_bleu"], 2),
            }
        )
    ckpt = run_dir / "checkpoints" / "best.pt"
    from nmt.checkpoint import load

    c = load(str(ckpt))
    # unique tensors: the tied embedding / output projection is stored once
    seen = {v.data_ptr(): v.numel() for v in c["model"].values() if hasattr(v, "numel")}
    n_params = sum(seen.values())
    return {
        "checkpoint": str(ckpt),
        "eval_every": eval_every,
        "steps": max((r["step"] for r in rows), default=0),
        "train_tok_per_s": round(tok / sec, 1) if sec else None,
        "train_tokens": int(sum(r["tokens"] for r in steps_rows)),
        "params": int(n_params),
        "peak_rss_mb": proc["peak_rss_mb"],
        "process_wall_s": proc["wall_s"],
        "dev_curve": curve,
        "loss_curve": [[r["wall_s"], r["step"], r["loss"]] for r in steps_rows],
        "_ckpt": c,
    }


class Decode:  # the decode config nmt.translate reads (conf/decode/beam5.yaml + defaults)
    alpha, beta, max_len_a, max_len_b, nbest, batch_tokens = 0.6, 0.1, 1.5, 10, 1, 4000

    def __init__(self, beam: int) -> None:
        self.beam_size = beam


def translate_ours(ckpt: str, src: list[str], threads: int) -> tuple[list[str], float]:
    import torch

    from nmt.inference import load_for_inference
    from nmt.translate import translate_lines

    torch.set_num_threads(threads)
    model, tok = load_for_inference(ckpt, "none")
    translate_lines(model, tok, src[:20], Decode(5))  # warm-up
    t = time.perf_counter()
    hyps = [h[0][0] for h in translate_lines(model, tok, src, Decode(5))]
    return hyps, time.perf_counter() - t


# --------------------------------------------------------------------------- Joey NMT


def export_data(ckpt: dict, out: Path, dev_limit: int, test_limit: int) -> dict:
    """Plain-text splits (one file per language) and the sentencepiece model + Joey vocab."""
    import sentencepiece as sp

    from nmt.config import dict_to_config
    from nmt.corpus import load_text

    d = out / "data"
    d.mkdir(parents=True, exist_ok=True)
    dcfg = dict_to_config(ckpt["config"]["data"])
    splits = load_text(dcfg, ("train", "dev", "test"))
    splits["dev"] = splits["dev"][: dev_limit or None]
    splits["test"] = splits["test"][: test_limit or None]
    sl, tl = ckpt["config"]["data"]["src_lang"], ckpt["config"]["data"]["tgt_lang"]
    for name, pairs in splits.items():
        (d / f"{name}.{sl}").write_text("".join(s.replace("\n", " ") + "\n" for s, _ in pairs))
        (d / f"{name}.{tl}").write_text("".join(t.replace("\n", " ") + "\n" for _, t in pairs))
    (d / "spm.model").write_bytes(ckpt["spm"])
    m = sp.SentencePieceProcessor(model_proto=ckpt["spm"])
    special = {"<pad>", "<unk>", "<s>", "</s>"}
    pieces = [m.id_to_piece(i) for i in range(m.get_piece_size())]
    (d / "vocab.txt").write_text("".join(p + "\n" for p in pieces if p not in special))
    return {"dir": d, "src": sl, "tgt": tl, "splits": splits}


def joey_config(args: argparse.Namespace, data: dict, model_dir: Path) -> str:
    d = data["dir"]

    def side(lang: str) -> str:
        return f"""
    lang: "{lang}"
    level: "bpe"
    lowercase: False
    max_length: 100
    min_length: 1
    voc_file: "{d / "vocab.txt"}"
    tokenizer_type: "sentencepiece"
    tokenizer_cfg:
      model_file: "{d / "spm.model"}" """

    h = args.peer_hidden
    # Joey NMT asserts the subset is smaller than the set: -1 = the whole (limited) dev file
    n = args.peer_val_sentences
    sub = n if n < len(data["splits"]["dev"]) else -1
    return f"""# generated by scripts/bench_peer.py
name: "peer_rnn"
joeynmt_version: "2.3.0"
model_dir: "{model_dir}"
use_cuda: False
fp16: False
random_seed: 1
data:
  train: "{d / "train"}"
  dev: "{d / "dev"}"
  test: "{d / "test"}"
  dataset_type: "plain"
  sample_dev_subset: {sub}
  src:{side(data["src"])}
  trg:{side(data["tgt"])}
testing:
  n_best: 1
  beam_size: 5
  beam_alpha: 0.6
  batch_size: 4000
  batch_type: "token"
  eval_metrics: ["bleu", "chrf"]
  sacrebleu_cfg:
    tokenize: "13a"
training:
  random_seed: 1
  optimizer: "adam"
  normalization: "tokens"
  label_smoothing: 0.1
  learning_rate: 0.002
  clip_grad_norm: 5.0
  scheduling: "exponential"
  decrease_factor: 1.0
  batch_size: {args.batch_tokens}
  batch_type: "token"
  eval_batch_size: 4000
  eval_batch_type: "token"
  epochs: 1000
  validation_freq: 100000000
  logging_freq: 10
  early_stopping_metric: "bleu"
  shuffle: True
  overwrite: True
  keep_best_ckpts: 1
  num_workers: 0
  use_cuda: False
model:
  initializer: "xavier_uniform"
  bias_initializer: "zeros"
  init_gain: 1.0
  embed_initializer: "normal"
  embed_init_weight: 0.1
  tied_embeddings: True
  tied_softmax: True
  encoder:
    type: "recurrent"
    rnn_type: "lstm"
    embeddings:
      embedding_dim: {h}
    hidden_size: {h}
    bidirectional: True
    dropout: 0.2
    num_layers: {args.peer_enc_layers}
  decoder:
    type: "recurrent"
    rnn_type: "lstm"
    embeddings:
      embedding_dim: {h}
    hidden_size: {h}
    dropout: 0.2
    hidden_dropout: 0.2
    num_layers: {args.peer_dec_layers}
    input_feeding: True
    init_hidden: "bridge"
    attention: "bahdanau"
"""


def _joey_train_main(cfg_path: str, budget_s: float, threads: int, result: str) -> None:
    import torch

    torch.set_num_threads(threads)
    import joeynmt.training as jt
    from joeynmt.config import load_config
    from joeynmt.helpers import make_model_dir
    from joeynmt.helpers_for_ddp import get_logger

    cfg = load_config(Path(cfg_path))
    model_dir = Path(cfg["model_dir"]).absolute()
    make_model_dir(model_dir, overwrite=True)
    shutil.copy2(cfg_path, model_dir / "config.yaml")
    get_logger("", log_file=str(model_dir / "train.log"))
    TM = jt.TrainManager
    st: dict = {"marks": [0.5, 1.0], "valid_s": 0.0, "curve": []}
    orig_tv, orig_step, orig_val = TM.train_and_validate, TM._train_step, TM._validate

    def tv(self, train_data, valid_data):  # type: ignore[no-untyped-def]
        st.update(valid=valid_data, t0=time.time(), tm=self)
        st["params"] = sum(p.numel() for p in self.model.parameters())
        return orig_tv(self, train_data, valid_data)

    def validate(self, valid_data):  # type: ignore[no-untyped-def]
        t = time.time()
        orig_val(self, valid_data)
        st["valid_s"] += time.time() - t
        line = (model_dir / "validations.txt").read_text().strip().splitlines()[-1]
        m = re.search(r"bleu:\s*([0-9.]+)", line)
        st["curve"].append(
            {
                "step": self.stats.steps,
                "wall_s": round(t - st["t0"], 1),
                "dev_bleu_greedy": float(m.group(1)) if m else None,
                "line": line,
            }
        )

    def step(self, batch):  # type: ignore[no-untyped-def]
        el = time.time() - st["t0"]
        if st["marks"] and el >= st["marks"][0] * budget_s:
            while st["marks"] and el >= st["marks"][0] * budget_s:
                st["marks"].pop(0)
            self._validate(st["valid"])
            # a validation that ran past the next mark does not start another one at once
            el = time.time() - st["t0"]
            while len(st["marks"]) > 1 and el >= st["marks"][0] * budget_s:
                st["marks"].pop(0)
            if not st["marks"]:
                st["end"] = time.time()
                self.stats.is_max_update = True
        return orig_step(self, batch)

    TM.train_and_validate, TM._train_step, TM._validate = tv, step, validate
    jt.train(rank=0, world_size=1, cfg=cfg, skip_test=True)
    tm = st["tm"]
    wall = st.get("end", time.time()) - st["t0"]
    train_s = wall - st["valid_s"]
    losses = []
    log = (model_dir / "train.log").read_text(errors="replace")
    t_first = None
    for m in re.finditer(
        r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+ .*Step:\s*(\d+), Batch Loss:\s*([0-9.]+)", log
    ):
        ts = time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S"))
        t_first = t_first or ts
        losses.append([round(ts - st["t0"], 1), int(m.group(2)), float(m.group(3))])
    out = {
        "steps": tm.stats.steps,
        "train_tokens": int(tm.stats.total_tokens),
        "train_seconds": round(train_s, 1),
        "budget_wall_s": round(wall, 1),
        "train_tok_per_s": round(tm.stats.total_tokens / train_s, 1),
        "params": int(st["params"]),
        "dev_curve": st["curve"],
        "loss_curve": losses,
        "best_ckpt": str(model_dir / "best.ckpt"),
    }
    Path(result).write_text(json.dumps(out))


def _joey_test_main(cfg_path: str, ckpt: str, threads: int, out_path: str, result: str) -> None:
    import torch

    torch.set_num_threads(threads)
    import joeynmt.prediction as jp
    from joeynmt.config import load_config
    from joeynmt.helpers_for_ddp import get_logger

    get_logger("", log_file=str(Path(out_path).parent / "test.log"))

    cfg = load_config(Path(cfg_path))
    cfg["testing"]["load_model"] = ckpt
    timing: list = []
    orig = jp.predict

    def predict(*a, **k):  # type: ignore[no-untyped-def]
        data = k.get("data", a[1] if len(a) > 1 else None)
        t = time.perf_counter()
        r = orig(*a, **k)
        timing.append({"sentences": len(data), "seconds": time.perf_counter() - t})
        return r

    jp.predict = predict
    jp.test(cfg, output_path=out_path)
    Path(result).write_text(json.dumps({"dev": timing[0], "test": timing[1]}))


def joey_params_only(cfg_path: str) -> None:
    """Print the parameter count of the configured Joey model (inside the venv)."""
    from joeynmt.config import _check_special_symbols, load_config
    from joeynmt.model import build_model
    from joeynmt.vocabulary import build_vocab

    cfg = load_config(Path(cfg_path))
    sym = _check_special_symbols(cfg["data"].get("special_symbols", {}))
    cfg["data"]["special_symbols"] = SimpleNamespace(**sym)
    sv, tv = build_vocab(cfg["data"])
    m = build_model(cfg["model"], src_vocab=sv, trg_vocab=tv)
    print(sum(p.numel() for p in m.parameters()))


# --------------------------------------------------------------------------- scoring + plots


def score(hyps: list[str], refs: list[str]) -> dict:
    import sacrebleu

    return {
        "bleu": round(sacrebleu.corpus_bleu(hyps, [refs]).score, 2),
        "chrf": round(sacrebleu.corpus_chrf(hyps, [refs]).score, 2),
    }


def plots(ours: dict, peer: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, r, mk in (("pipenmt gnmt_small", ours, "o-"), ("Joey NMT 2.3.0 RNN", peer, "s-")):
        xs = [0.0] + [p["wall_s"] / 60 for p in r["dev_curve"]]
        ys = [0.0] + [p["dev_bleu_greedy"] or 0.0 for p in r["dev_curve"]]
        ax.plot(xs, ys, mk, label=f"{name} (test BLEU {r['test']['bleu']:.2f}, beam 5)")
    ax.set_xlabel("training wall-clock (min, validation included)")
    ax.set_ylabel("dev BLEU (greedy, validation subset)")
    ax.set_title("BLEU vs wall-clock, same 2-vCPU machine")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "bleu_vs_time.png", dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, r in (("pipenmt gnmt_small", ours), ("Joey NMT 2.3.0 RNN", peer)):
        c = r["loss_curve"]
        if c:
            ax.plot([x[0] / 60 for x in c], [x[2] for x in c], label=name)
    ax.set_xlabel("training wall-clock (min)")
    ax.set_ylabel("training loss per target token (label smoothing 0.1)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "loss_curves.png", dpi=110)
    plt.close(fig)
    return [str(out / "bleu_vs_time.png"), str(out / "loss_curves.png")]


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=8.0, help="training budget per system")
    ap.add_argument("--batch-tokens", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--test-limit", type=int, default=0, help="first N test sentences (0 = all)")
    ap.add_argument("--dev-limit", type=int, default=1000, help="first N dev sentences scored")
    ap.add_argument("--val-sentences", type=int, default=500, help="dev sentences per validation")
    ap.add_argument(
        "--peer-val-sentences",
        type=int,
        default=100,
        help="Joey NMT: dev sentences per validation (its greedy decoding of an early model "
        "runs to the length limit: 500 sentences took 2 min 18 s here)",
    )
    ap.add_argument("--eval-every", type=int, default=0, help="ours; 0 = about 4 per budget")
    ap.add_argument("--peer-hidden", type=int, default=256)
    ap.add_argument("--peer-enc-layers", type=int, default=2)
    ap.add_argument("--peer-dec-layers", type=int, default=4)
    ap.add_argument("--out", default=str(ROOT / "outputs" / "bench"))
    ap.add_argument(
        "--reuse-ours", action="store_true", help="keep a finished run of ours in --out"
    )
    ap.add_argument("--joey-train", nargs=4, help=argparse.SUPPRESS)
    ap.add_argument("--joey-test", nargs=5, help=argparse.SUPPRESS)
    ap.add_argument("--joey-params", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.joey_train:
        c, b, t, r = args.joey_train
        return _joey_train_main(c, float(b), int(t), r)
    if args.joey_test:
        c, k, t, o, r = args.joey_test
        return _joey_test_main(c, k, int(t), o, r)
    if args.joey_params:
        return joey_params_only(args.joey_params)

    import torch

    sys.path.insert(0, str(ROOT))
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    venv_info = ensure_venv()
    print(f"[peer] Joey NMT environment: {VENV} {venv_info}", file=sys.stderr)
    t_all = time.perf_counter()

    # 1. ours: train for the budget
    ours = train_ours(args, out)
    ckpt = ours.pop("_ckpt")
    data = export_data(ckpt, out, args.dev_limit, args.test_limit)
    del ckpt

    # 2. Joey NMT: same data, spm, batch tokens, threads, budget
    jdir = out / "joey"
    if jdir.exists():
        shutil.rmtree(jdir)
    jdir.mkdir(parents=True)
    cfg_path = out / "joey_config.yaml"
    cfg_path.write_text(joey_config(args, data, jdir / "model"))
    splits = data.pop("splits")
    py = str(venv_python())
    env = thread_env(args.threads)
    print(f"[peer] joey: training {args.minutes} min ({cfg_path})", file=sys.stderr)
    proc = run_watched(
        [
            py,
            __file__,
            "--joey-train",
            str(cfg_path),
            str(args.minutes * 60),
            str(args.threads),
            str(jdir / "train.json"),
        ],
        env,
        out / "joey_train.log",
    )
    peer = json.loads((jdir / "train.json").read_text())
    peer.update(peak_rss_mb=proc["peak_rss_mb"], process_wall_s=proc["wall_s"])

    # 3. ours: beam-5 dev + test translation (timed on test)
    refs = {s: [t for _, t in splits[s]] for s in ("dev", "test")}
    srcs = {s: [x for x, _ in splits[s]] for s in ("dev", "test")}
    print("[peer] ours: beam-5 translation of dev and test", file=sys.stderr)
    hyp_d, _ = translate_ours(ours["checkpoint"], srcs["dev"], args.threads)
    hyp_t, sec = translate_ours(ours["checkpoint"], srcs["test"], args.threads)
    (out / "ours.hyp.test").write_text("\n".join(hyp_t) + "\n")
    ours.update(dev=score(hyp_d, refs["dev"]), test=score(hyp_t, refs["test"]))
    ours["beam5_sent_per_s"] = round(len(hyp_t) / sec, 1)
    torch.set_num_threads(args.threads)

    # 4. Joey NMT: beam-5 dev + test translation (its own test loop, timed per split)
    print("[peer] joey: beam-5 translation of dev and test", file=sys.stderr)
    run_watched(
        [
            py,
            __file__,
            "--joey-test",
            str(cfg_path),
            peer["best_ckpt"],
            str(args.threads),
            str(jdir / "hyp"),
            str(jdir / "test.json"),
        ],
        env,
        out / "joey_test.log",
    )
    tj = json.loads((jdir / "test.json").read_text())
    for s in ("dev", "test"):
        hyps = (jdir / f"hyp.{s}").read_text().splitlines()
        peer[s] = score(hyps, refs[s])
    peer["beam5_sent_per_s"] = round(tj["test"]["sentences"] / tj["test"]["seconds"], 1)

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 2) if a and b else None

    ratios = {
        "train_tok_per_s": ratio(ours["train_tok_per_s"], peer["train_tok_per_s"]),
        "beam5_sent_per_s": ratio(ours["beam5_sent_per_s"], peer["beam5_sent_per_s"]),
        "peak_rss": ratio(ours["peak_rss_mb"], peer["peak_rss_mb"]),
        "params": ratio(ours["params"], peer["params"]),
        "test_bleu_diff": round(ours["test"]["bleu"] - peer["test"]["bleu"], 2),
    }
    goals = {
        "train_tok_per_s_10x": bool(ratios["train_tok_per_s"] and ratios["train_tok_per_s"] >= 10),
        "beam5_sent_per_s_10x": bool(
            ratios["beam5_sent_per_s"] and ratios["beam5_sent_per_s"] >= 10
        ),
        "test_bleu_20": ours["test"]["bleu"] >= 20,
    }
    pngs = plots(ours, peer, out)
    machine = {
        "platform": platform.platform(),
        "cpu": next(
            (
                ln.split(":", 1)[1].strip()
                for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")
            ),
            "?",
        ),
        "cpus": os.cpu_count(),
        "threads": args.threads,
        "torch": torch.__version__,
    }
    for r in (ours, peer):
        r.pop("loss_curve", None)
    summary = {
        "bench": "peer",
        "peer": "joeynmt 2.3.0 (recurrent encoder-decoder, Bahdanau attention, input feeding)",
        "minutes": args.minutes,
        "batch_tokens": args.batch_tokens,
        "threads": args.threads,
        "dev_sentences": len(refs["dev"]),
        "test_sentences": len(refs["test"]),
        "ours": ours,
        "joeynmt": peer,
        "ratios": ratios,
        "goals": goals,
        "plots": pngs,
        "total_wall_s": round(time.perf_counter() - t_all, 1),
        "machine": machine,
    }
    (out / "peer.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
