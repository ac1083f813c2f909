"""Structured-config schemas (Hydra ConfigStore schema pattern).

Every YAML option under ``conf/<group>/`` starts with ``defaults: [<group>_schema]``,
so a misspelt key or a value of the wrong type fails at composition time.
Only this module and :mod:`nmt.cli` import Hydra/OmegaConf.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf


@dataclass
class DataConfig:
    name: str = MISSING
    # "debian": corpus built from Debian packages (shipped or rebuilt); "files": local
    # TSV/JSONL/parquet files; "hub": a Hugging Face hub dataset (needs internet).
    source: str = "debian"
    # debian: which corpus ("debian_de_en" ships with the package; "debian_de_en_full" is built).
    corpus: str = "debian_de_en"
    # files: paths of the splits (TSV with a header naming the languages, JSONL or parquet).
    train: str | None = None
    dev: str | None = None
    test: str | None = None
    # hub: dataset name and config, e.g. wmt16 / de-en.
    hub_name: str | None = None
    hub_config: str | None = None
    src_lang: str = "en"
    tgt_lang: str = "de"
    # multilingual (nmt/prepare/multilingual.py; data=debian_multi): the trained directions, e.g.
    # [en-de, de-en, en-fr, fr-en]; each source starts with its target's tag <2xx>. Empty:
    # one pair, src_lang -> tgt_lang. zero_shot: directions evaluated, never trained.
    directions: list[str] = field(default_factory=list)
    zero_shot: list[str] = field(default_factory=list)
    # multilingual: the target also starts with its <2xx> tag, so the decoder reads the target
    # language from its first input instead of finding it through attention (nmt/prepare/splits.py)
    target_tag: bool = False
    cache_dir: str = "~/.cache/pipenmt"
    # filtering
    min_len: int = 1
    max_len: int = 100  # subword tokens, either side
    max_ratio: float = 2.5
    dedupe: bool = True
    drop_identical: bool = True
    on_bad_utf8: str = "error"  # error | replace
    # sentencepiece
    # a checkpoint path or shipped model's name whose sentencepiece model this run uses instead
    # of training one (fine-tuning that model on other data); empty: train (or take from cache)
    tokenizer: str = ""
    vocab_size: int = 8000
    spm_model_type: str = "unigram"
    spm_max_sentences: int = 300000
    # batching
    batch_tokens: int = 4096
    pad_multiple: int = 8
    max_dev_sentences: int = 1000  # dev sentences translated for validation BLEU; 0 = all


@dataclass
class ModelConfig:
    name: str = MISSING
    arch: str = "gnmt"  # gnmt | transformer (nmt/models/registry.py)
    hidden: int = 256  # embedding size == hidden size (needed for tied output projection)
    enc_layers: int = 4
    dec_layers: int = 4
    dropout: float = 0.2
    tie_embeddings: bool = True
    init_range: float = 0.1
    # Generator bias at step 0: "prior" = log unigram frequencies of the training targets (the
    # untrained model already predicts them: no plateau at unigram perplexity); "uniform" =
    # the architecture's own init (GNMT: U(-init_range, init_range) like every other weight,
    # NVIDIA GNMT v2; Transformer: zero).
    output_bias: str = "prior"
    heads: int = 4  # transformer: attention heads (hidden % heads == 0)
    ffn: int = 0  # transformer: feed-forward width; 0 = 4 x hidden


@dataclass
class ParallelConfig:
    name: str = "none"
    pp: int = 1  # pipeline ranks
    dp: int = 1  # data-parallel replicas of the pipeline
    microbatches: int = 1
    schedule: str = "gpipe"  # gpipe | 1f1b | interleaved_1f1b
    placement: str = "contiguous"  # contiguous | gnmt | auto
    balance: list[int] | None = None
    plan: str | None = None
    recompute: bool = False
    timeout_s: float = 120.0  # every collective of the step (a dead rank is named after this)
    # rank 0's validation decoding and export, while the other ranks wait
    phase_timeout_s: float = 3600.0
    backend: str = "auto"  # auto | gloo | nccl
    nproc: int = 1  # translation: shard input lines over this many processes
    # GNMT's wavefront: > 1 cuts each batch along time into this many chunks; the layers wave
    # over them, exact (nmt/models/wavefront.py; with pp > 1 across processes,
    # nmt/train/wavefront_ranks.py, balance = layers per rank)
    time_chunks: int = 1
    # wavefront across processes: share of the batch's sentences whose generator (and loss)
    # runs on a helper rank rather than the generator's: the last decoder layer's rank, or
    # the rank before when the generator shares its rank with the last decoder layer
    generator_share: float = 0.0
    # wavefront across processes: every rank runs the encoder on a share of the batch's
    # sentences (the encoder's forward and backward on all ranks at once)
    encoder_split: bool = False
    # with encoder_split: each rank's weight in that share-out (one per rank of the pipeline,
    # e.g. [0.45, 0.55]); None = equal shares
    encoder_shares: list[float] | None = None
    # wavefront across processes, with encoder_split: Dec2's rank runs the attention of the
    # sentences it encoded (Dec1's rank the others'), so their encoder output never leaves it
    attention_split: bool = False
    # wavefront across processes over gloo: sum the shared gradients that are final (all but
    # the encoder's) while the encoder's backward runs, not after it (wave_gradients.py)
    overlap_gradients: bool = True
    # one-process wavefront on a GPU: a CUDA stream per layer (events for the dependencies)
    wave_streams: bool = False
    # the wavefront's pp ranks as threads of one process on a CPU (chunks through memory,
    # gradients summed in memory) instead of pp processes
    wave_threads: bool = False


@dataclass
class TrainConfig:
    seed: int = 1
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # torch intra-op threads; 0 = torch default
    # auto | fp32 | bf16 | fp16 (GPU only). auto: bf16 autocast on a GPU; on a CPU bf16 where it
    # trains this model faster than fp32, measured once per machine (nmt/machine/calibrate.py)
    precision: str = "auto"
    max_steps: int = 0  # 0 = unbounded
    max_epochs: int = 0
    max_minutes: float = 0.0
    log_every: int = 10
    eval_every: int = 200
    save_every: int = 0  # checkpoint interval in steps; 0 = at every validation
    out_dir: str | None = None  # run folder; the CLI sets it to Hydra's run dir
    eval_bleu: bool = True
    resume: str = "none"  # none | auto | PATH
    lr: float = 2e-3
    warmup_steps: int = 200  # capped at a tenth of the run (nmt/train/schedule.py)
    # LR decay over whatever bounds the run (max_steps, max_epochs, max_minutes: the first to
    # end): step (NVIDIA's halvings) | cosine | linear | inverse_sqrt | none
    decay: str = "step"
    decay_start: float = 0.666  # share of the run where decay starts
    decay_steps: int = 4  # number of halvings (step); final lr = decay_factor**decay_steps
    decay_factor: float = 0.5
    clip_norm: float = 5.0
    label_smoothing: float = 0.1
    patience: int = 0  # validations without BLEU improvement before stopping; 0 = off
    keep_last: int = 2
    max_bad_steps: int = 5  # non-finite losses or gradient norms in a row before stopping
    # Batches per optimizer step on one device (gradient accumulation): the same update as
    # parallel.dp replicas each on one of those batches.
    accumulate: int = 1


@dataclass
class DecodeConfig:
    name: str = "beam5"
    beam_size: int = 5
    alpha: float = 0.6
    beta: float = 0.1
    max_len_a: float = 1.5
    max_len_b: int = 10
    nbest: int = 1
    batch_tokens: int = 4000
    # auto | none | int8 (CPU: linear layers and decoder LSTMs, weights per channel,
    # activations per row, so a line's output does not depend on its batch; nmt/models/int8.py).
    # auto on a CPU: whichever of fp32, int8 and bf16 (where it runs) decodes this model
    # fastest here, measured once per machine and model shape (nmt/machine/calibrate.py); none on a
    # GPU
    quantize: str = "auto"
    device: str = "auto"  # auto (cuda if available, else cpu) | cpu | cuda | cuda:N
    # search over the model's vocabulary shortlist when it carries one (nmt/decode/shortlist.py);
    # off by default: measured slower than the full vocabulary
    # (docs/results/translate/amx/bench_translate_shortlist.json)
    shortlist: bool = False
    # beam pruning (nmt/decode/search.py: Pruning; Freitag & Al-Onaizan 2017): a continuation below
    # relative * P(best candidate), or more than absolute nats below it, stops; 0 = off.
    # 0.3: fp32 beam 5 decodes 1.65x (amx) / 1.81x (avx2) faster on 2 threads
    # (docs/results/translate/<class>/bench_translate.json); the shipped en-de model scores
    # 30.94 test BLEU with it (int8) and 31.07 in plain fp32 without (BENCHMARKS.md)
    prune_relative: float = 0.3
    prune_absolute: float = 0.0
    # a multilingual model: the language to translate into (its tag <2xx> starts the source)
    target_lang: str = ""
    # fp32 | bf16 (a CPU without a bf16 LSTM kernel refuses it) | fp16 (GPU only) | auto (bf16
    # on a GPU; on a CPU calibrated with decode.quantize); the search accumulates in fp32
    dtype: str = "auto"
    # keep printf/brace/shell placeholders, markup, URLs and accelerators: masked as {1}, {2}, ...
    # before the search, put back after it (data/placeables.py); false: translate them as text
    placeables: bool = True
    # with placeables: the search may only write the source's sentinels, each once, and ends
    # only when all are written (nmt/decode/sentinels.py); false: the model alone decides
    placeable_constraint: bool = True


@dataclass
class ServeConfig:
    """``nmt-serve``'s limits besides ``host``/``port``/``api_key`` (top-level keys)."""

    max_queue: int = 256  # sentences waiting; a request that would overflow it gets 503
    max_chars: int = 5000  # per request (all its texts); more is 413
    max_batch: int = 256  # sentences decoded together from concurrent requests
    batch_wait_ms: float = 5.0  # how long the first request waits for others to join it
    request_timeout_s: float = 120.0


@dataclass
class AppConfig:
    """The root config shared by every command (groups + per-command top-level keys)."""

    data: DataConfig = MISSING
    model: ModelConfig = MISSING
    parallel: ParallelConfig = MISSING
    train: TrainConfig = MISSING
    decode: DecodeConfig = MISSING
    # nmt-translate / nmt-eval
    checkpoint: str | None = None
    input: str = "-"
    output: str = "-"
    split: str = "test"
    hyp: str | None = None
    ref: str | None = None
    limit: int = 0  # nmt-eval checkpoint=...: the first N sentences of the split (0 = all)
    pivot: bool = False  # nmt-eval, multilingual: also zero-shot directions through English
    # nmt-profile
    profile_out: str = "costs.json"
    # nmt-translate: input format, from the input's suffix by default (.po/.pot: gettext)
    input_format: str = "auto"  # auto | text | po
    po_fuzzy: bool = True  # mark the entries nmt-translate wrote "#, fuzzy" (for review)
    po_overwrite: bool = False  # also replace entries that already have a translation
    # nmt-serve
    host: str = "127.0.0.1"
    port: int = 5000
    api_key: str = ""  # when set, every request must carry it (LibreTranslate's api_key)
    serve: ServeConfig = field(default_factory=ServeConfig)


Group = TypeVar("Group")


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="app_schema", node=AppConfig)
    cs.store(group="data", name="data_schema", node=DataConfig)
    cs.store(group="model", name="model_schema", node=ModelConfig)
    cs.store(group="parallel", name="parallel_schema", node=ParallelConfig)
    cs.store(group="train", name="train_schema", node=TrainConfig)
    cs.store(group="decode", name="decode_schema", node=DecodeConfig)


def config_to_dict(cfg: object) -> dict[str, Any]:
    """A plain dict of a typed config (or of one of its groups) for checkpoints and logs."""
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise TypeError(f"cannot convert {type(cfg).__name__} to a dict")
    return dataclasses.asdict(cfg)


def typed(cfg: DictConfig) -> AppConfig:
    """The composed config as the objects of the schema above (interpolations resolved);
    what every function below the CLI receives."""
    from omegaconf.errors import OmegaConfBaseException

    from nmt.errors import UserError

    try:
        out = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as err:  # e.g. a mandatory value left as ???
        raise UserError(str(err).splitlines()[0]) from None
    assert isinstance(out, AppConfig)
    return out


def compose(overrides: list[str] | None = None, config_name: str = "config") -> DictConfig:
    """The config tree as Hydra composes it, without the CLI (before :func:`typed`)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    register_configs()
    with initialize_config_module(config_module="conf", version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides or []))


def compose_config(overrides: list[str] | None = None, config_name: str = "config") -> AppConfig:
    """The typed config tree without the CLI (tests, scripts, notebooks)."""
    return typed(compose(overrides, config_name))


def from_dict(schema: type[Group], saved: dict[str, Any]) -> Group:
    """A saved config dict (a checkpoint's ``config`` or one of its groups) as ``schema``'s
    object: keys the schema no longer has are dropped, keys it has since gained take their
    defaults, so checkpoints written by earlier versions still load."""
    node = OmegaConf.structured(schema)
    out = OmegaConf.to_object(OmegaConf.merge(node, _known(schema, saved)))
    assert isinstance(out, schema)
    return out


def _known(schema: type, saved: dict[str, Any]) -> dict[str, Any]:
    """``saved`` restricted to the fields of ``schema`` (recursively, through groups)."""
    hints = typing.get_type_hints(schema)
    out: dict[str, Any] = {}
    for f in dataclasses.fields(schema):
        if f.name in saved:
            value, kind = saved[f.name], hints[f.name]
            nested = dataclasses.is_dataclass(kind) and isinstance(value, dict)
            out[f.name] = _known(kind, value) if nested else value
    return out
