"""Hydra entry points. The only module (with nmt/config.py) that touches Hydra.

Each ``*_main`` is a thin ``@hydra.main`` wrapper that turns the composed config into the
plain function call (``train(cfg) -> metrics`` etc.). User errors print one line and exit 2;
``HYDRA_FULL_ERROR=1`` shows the traceback instead.

``nmt-train -m a=1,2 b=x,y`` is a Hydra multirun: one job per combination, each in its own
folder ``hydra.sweep.dir/<job number>``; its return value (best dev BLEU) is the objective a
search sweeper (``hydra/sweeper=optuna``, extra ``pipenmt[optuna]``) maximises.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import hydra
from omegaconf import DictConfig

from nmt.config import AppConfig, register_configs, typed
from nmt.errors import user_error_types

register_configs()
_CONFIG_PATH = "pkg://conf"
_VERSION = "1.3"


def _guarded(
    fn: Callable[[AppConfig], Any],
    cfg: DictConfig | AppConfig,
    name: str,
    adjust: Callable[[DictConfig], DictConfig] | None = None,
) -> Any:
    """Run ``fn`` on the typed config (a composed one goes through ``adjust`` and
    :func:`nmt.config.typed`); a user error becomes one line on stderr and exit status 2."""
    try:
        if isinstance(cfg, DictConfig):
            cfg = typed(adjust(cfg) if adjust else cfg)
        return fn(cfg)
    except user_error_types() as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"{name}: error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:  # e.g. `nmt-translate ... | head`: the reader went away
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # no second error when Python flushes at exit
        sys.exit(141)
    except OSError as err:  # the environment, not the code: unwritable folder, disk full ...
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        where = f": {err.filename}" if err.filename else ""
        print(f"{name}: error: {err.strerror or err}{where}", file=sys.stderr)
        sys.exit(2)


_MULTIRUN_FLAGS = ("-m", "--multirun")


def _precheck(config_name: str, name: str) -> None:
    """Compose the config from the command line before Hydra runs, so that an unknown key,
    a wrong type or an unknown option fails with one line and exit status 2. A multirun
    (``-m``) is checked with every value of each sweep (one sweep at a time)."""
    args = [a for a in sys.argv[1:] if a not in _MULTIRUN_FLAGS]
    multirun = len(args) < len(sys.argv) - 1
    if any(a.startswith("-") for a in args) or os.environ.get("HYDRA_FULL_ERROR") == "1":
        return  # Hydra's own flags (--help, --cfg ...): let Hydra handle everything
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    overrides = [a for a in args if not a.lstrip("+~").startswith("hydra.")]
    try:
        variants = _sweep_variants(overrides, name) if multirun else [overrides]
        with initialize_config_module(config_module="conf", version_base=_VERSION):
            for variant in variants:
                compose(config_name=config_name, overrides=variant)
    except (HydraException, OmegaConfBaseException) as err:
        lines = [x.strip() for x in str(err).strip().splitlines() if x.strip()]
        options = [
            x
            for x in lines[1:]
            if not x.startswith(
                ("Config search", "provider=", "full_key", "object_type", "reference_type")
            )
        ]
        detail = lines[0] if lines else type(err).__name__
        cause = str(err.__cause__ or "").strip()
        if options and "Available options" in options[0]:
            detail += (
                " (options: " + ", ".join(o for o in options[1:] if not o.endswith("_schema")) + ")"
            )
        elif cause:  # the reason: a wrong type, an unknown key ...
            detail = f"{detail.rstrip('.')}: {cause.splitlines()[0]}{_did_you_mean(cause)}"
        elif len(lines) > 1 and not lines[1].startswith(("full_key", "Config search")):
            detail += f": {lines[1]}"
        if "'hydra/sweeper/optuna'" in detail:
            detail += " (the Optuna sweeper is an extra: pip install 'pipenmt[optuna]')"
        print(f"{name}: error: {detail}", file=sys.stderr)
        sys.exit(2)
    _check_run_dir(args, config_name, name, multirun)


def _sweep_variants(overrides: list[str], name: str) -> list[list[str]]:
    """Override lists that cover a multirun's values: the first value of every sweep, then
    each further value of one sweep at a time (sum, not product, of the sweep sizes).
    ``interval(a, b)`` sweeps (Optuna) are checked at both ends; ``glob`` sweeps are not."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import IntervalSweep

    def number(x: float) -> str:
        return str(int(x)) if float(x).is_integer() else repr(x)

    fixed: list[str] = []
    sweeps: list[tuple[str, list[str]]] = []
    for o in OverridesParser.create().parse_overrides(overrides):
        if not o.is_sweep_override():
            fixed.append(str(o.input_line))
            continue
        value = o.value()
        if isinstance(value, IntervalSweep) and value.start is not None and value.end is not None:
            if not any(a.lstrip("+").startswith("hydra/sweeper=") for a in sys.argv[1:]):
                print(
                    f"{name}: error: {o.input_line}: interval() needs a search sweeper, e.g. "
                    "hydra/sweeper=optuna (pip install 'pipenmt[optuna]'); list values "
                    "(a,b,c) for a grid",
                    file=sys.stderr,
                )
                sys.exit(2)
            values = [number(value.start), number(value.end)]
        else:
            try:
                values = list(o.sweep_string_iterator())
            except Exception:  # glob(): needs Hydra's config loader; Hydra checks it
                continue
        if values:
            sweeps.append((o.get_key_element(), values))
    out_dir = [x for x in fixed if x.lstrip("+").startswith("train.out_dir=")]
    if sweeps and out_dir and "${" not in out_dir[-1]:
        print(
            f"{name}: error: {out_dir[-1].lstrip('+')} would be shared by every job of the "
            "multirun; leave train.out_dir unset (each job gets its own folder under "
            "hydra.sweep.dir)",
            file=sys.stderr,
        )
        sys.exit(2)
    first = [f"{key}={values[0]}" for key, values in sweeps]
    variants = [fixed + first]
    for i, (key, values) in enumerate(sweeps):
        variants += [fixed + first[:i] + [f"{key}={v}"] + first[i + 1 :] for v in values[1:]]
    return variants


def _did_you_mean(cause: str) -> str:
    """`` (did you mean data.vocab_size?)`` for an unknown key close to a schema field."""
    import dataclasses
    import difflib
    import re

    from nmt import config

    found = re.search(r"Key '(\w+)' not in '(\w+)'", cause)
    full = re.search(r"full_key: ([\w.]+)", cause)
    schema = getattr(config, found.group(2), None) if found else None
    if not found or not full or not dataclasses.is_dataclass(schema):
        return ""
    key = found.group(1)

    def likeness(name: str) -> float:  # the whole name or one of its words (beem: beam_size)
        parts = [name, *name.split("_")]
        return max(difflib.SequenceMatcher(None, key, p).ratio() for p in parts)

    best = max((f.name for f in dataclasses.fields(schema)), key=likeness, default=None)
    if best is None or likeness(best) < 0.6:
        return ""
    prefix = full.group(1).rpartition(".")[0]
    return f" (did you mean {prefix + '.' if prefix else ''}{best}?)"


def _check_run_dir(args: list[str], config_name: str, name: str, multirun: bool) -> None:
    """Create the run folder Hydra is about to create (a multirun's sweep folder), so that an
    unusable path (below a regular file, read-only, ...) is one line and exit 2 instead of
    Hydra's traceback."""
    key = "hydra.sweep.dir=" if multirun else "hydra.run.dir="
    given = [a.split("=", 1)[1] for a in args if a.lstrip("+").startswith(key)]
    if given:
        folder = given[-1].strip("'\"")
    elif config_name == "config":
        folder = "runs"  # the parent of the default runs/<date> and runs/multirun/<date>
    else:
        return
    if not folder or "${" in folder:
        return
    try:
        os.makedirs(os.path.expanduser(folder), exist_ok=True)
    except OSError as err:
        print(f"{name}: error: cannot create run folder {folder}: {err.strerror}", file=sys.stderr)
        sys.exit(2)


def _entry(hydra_main: Callable[[], None], config_name: str, name: str) -> Callable[[], None]:
    def main() -> None:
        from nmt.machine import hostmem

        hostmem.tune()  # glibc keeps freed buffers for the next step (nmt/machine/hostmem.py)
        if name == "nmt-train":
            hostmem.cap_onednn_cache()  # bf16 training's kernel cache grew by GBs
        _precheck(config_name, name)
        hydra_main()

    main.__name__ = hydra_main.__name__
    return main


@hydra.main(config_path=_CONFIG_PATH, config_name="tool", version_base=_VERSION)
def _prepare_main(cfg: DictConfig) -> None:
    from nmt.prepare.command import prepare

    _guarded(prepare, cfg, "nmt-prepare")


@hydra.main(config_path=_CONFIG_PATH, config_name="config", version_base=_VERSION)
def _train_main(cfg: DictConfig) -> float:
    """Train; returns what a search sweeper maximises: the run's best dev BLEU (NaN, a failed
    trial for Optuna, when the run computed no dev BLEU)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from nmt.train.run import train

    if not cfg.train.out_dir:
        with open_dict(cfg):
            cfg.train.out_dir = HydraConfig.get().runtime.output_dir
    bleu = _guarded(train, cfg, "nmt-train").get("best_dev_bleu")
    return float("nan") if bleu is None else float(bleu)


def _tuned_decode(cfg: DictConfig) -> DictConfig:
    """A model folder's ``decode.yaml`` (settings tuned for it,
    :func:`nmt.release.shipped.tuned_decode`)
    fills ``cfg.decode`` except the keys the command line sets (``decode.KEY=...``; the
    ``decode=`` groups only pick the beam size)."""
    from hydra.core.hydra_config import HydraConfig

    from nmt.release.shipped import resolve_checkpoint, tuned_decode

    if not cfg.get("checkpoint"):
        return cfg
    given = {o.split("=", 1)[0].lstrip("+~") for o in HydraConfig.get().overrides.task}
    path, _ = resolve_checkpoint(str(cfg.checkpoint))
    for key, value in tuned_decode(path).items():
        if f"decode.{key}" not in given:
            cfg.decode[key] = value
    return cfg


@hydra.main(config_path=_CONFIG_PATH, config_name="tool", version_base=_VERSION)
def _translate_main(cfg: DictConfig) -> None:
    from nmt.decode.command import translate_cli

    _guarded(translate_cli, cfg, "nmt-translate", _tuned_decode)


@hydra.main(config_path=_CONFIG_PATH, config_name="tool", version_base=_VERSION)
def _eval_main(cfg: DictConfig) -> None:
    from nmt.decode.evaluate import eval_cli

    _guarded(eval_cli, cfg, "nmt-eval", _tuned_decode)


@hydra.main(config_path=_CONFIG_PATH, config_name="tool", version_base=_VERSION)
def _profile_main(cfg: DictConfig) -> None:
    from nmt.machine.stage_costs import profile_cli

    _guarded(profile_cli, cfg, "nmt-profile")


@hydra.main(config_path=_CONFIG_PATH, config_name="tool", version_base=_VERSION)
def _serve_main(cfg: DictConfig) -> None:
    from nmt.serve.command import serve

    _guarded(serve, cfg, "nmt-serve", _tuned_decode)


prepare_main = _entry(_prepare_main, "tool", "nmt-prepare")
train_main = _entry(_train_main, "config", "nmt-train")
translate_main = _entry(_translate_main, "tool", "nmt-translate")
eval_main = _entry(_eval_main, "tool", "nmt-eval")
profile_main = _entry(_profile_main, "tool", "nmt-profile")
serve_main = _entry(_serve_main, "tool", "nmt-serve")
