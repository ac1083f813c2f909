"""Hydra entry points. The only module (with nmt/config.py) that touches Hydra.

Each ``*_main`` is a thin ``@hydra.main`` wrapper that turns the composed config into the
plain function call (``train(cfg) -> metrics`` etc.). User errors print one line and exit 2;
``HYDRA_FULL_ERROR=1`` shows the traceback instead.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from nmt.config import register_configs
from nmt.errors import user_error_types

register_configs()
_CONFIG_PATH = "pkg://conf"
_VERSION = "1.3"


def _guarded(fn: Callable[[DictConfig], Any], cfg: DictConfig, name: str) -> Any:
    """Run ``fn(cfg)``; a user error becomes one line on stderr and exit status 2."""
    try:
        return fn(cfg)
    except user_error_types() as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"{name}: error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        sys.exit(130)


@hydra.main(config_path=_CONFIG_PATH, config_name="tool", version_base=_VERSION)
def prepare_main(cfg: DictConfig) -> None:
    from nmt.prepare import prepare

    _guarded(prepare, cfg, "nmt-prepare")


@hydra.main(config_path=_CONFIG_PATH, config_name="config", version_base=_VERSION)
def train_main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from nmt.train import train

    if not cfg.train.out_dir:
        with open_dict(cfg):
            cfg.train.out_dir = HydraConfig.get().runtime.output_dir
    _guarded(train, cfg, "nmt-train")


@hydra.main(config_path=_CONFIG_PATH, config_name="tool", version_base=_VERSION)
def translate_main(cfg: DictConfig) -> None:
    from nmt.translate import translate_cli

    _guarded(translate_cli, cfg, "nmt-translate")


@hydra.main(config_path=_CONFIG_PATH, config_name="tool", version_base=_VERSION)
def eval_main(cfg: DictConfig) -> None:
    from nmt.evaluate import eval_cli

    _guarded(eval_cli, cfg, "nmt-eval")


@hydra.main(config_path=_CONFIG_PATH, config_name="tool", version_base=_VERSION)
def profile_main(cfg: DictConfig) -> None:
    from nmt.profile import profile_cli

    _guarded(profile_cli, cfg, "nmt-profile")


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)
