"""Joey NMT's side of the peer benchmark (``scripts/bench/peer.py``): its virtual environment
and the code that runs inside it, as a file (this module imports nothing of the project).

    python scripts/bench/_joey.py --joey-train CFG BUDGET_S THREADS RESULT_JSON   (in the venv)
    python scripts/bench/_joey.py --joey-test CFG CKPT THREADS OUT RESULT_JSON     (in the venv)

``export_data`` writes the shared data for Joey NMT (plain-text splits, our sentencepiece model,
its vocabulary file); it runs in the project's environment. The environment,
``~/.cache/pipenmt/peer-venv``, is built on first use from the running
interpreter with ``--system-site-packages`` plus a ``.pth`` file naming the running
interpreter's own site-packages (so it shares this torch, also from inside a project venv):
``pip install --no-deps joeynmt==2.3.0`` and the packages it imports on these paths.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

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


def export_data(ckpt: dict, out: Path, dev_limit: int, test_limit: int) -> dict:
    """Plain-text splits (one file per language) and the sentencepiece model + Joey vocab."""
    import sentencepiece as sp

    from nmt.config import DataConfig, from_dict
    from nmt.prepare.splits import load_text

    d = out / "data"
    d.mkdir(parents=True, exist_ok=True)
    dcfg = from_dict(DataConfig, ckpt["config"]["data"])
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
    return f"""# generated by python -m scripts.bench peer
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--joey-train", nargs=4)
    ap.add_argument("--joey-test", nargs=5)
    args = ap.parse_args()
    if args.joey_train:
        c, b, t, r = args.joey_train
        _joey_train_main(c, float(b), int(t), r)
    elif args.joey_test:
        c, k, t, o, r = args.joey_test
        _joey_test_main(c, k, int(t), o, r)
    else:
        ap.error("one of --joey-train, --joey-test")


if __name__ == "__main__":
    main()
