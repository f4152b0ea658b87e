"""Build a decoded-image cache: ``python -m joint_colsr.preprocess data=... cache_dir=DIR``.

Decodes every photo of the configured data source once (in ``num_workers`` processes),
excludes what cannot be used (unreadable, grayscale, tiny, extreme aspect ratio; counted
by reason), and writes memory-mappable uint8 shards plus ``index.json`` and
``shards.jsonl`` (see :mod:`joint_colsr.data.cache`). Resumable: rerun the same command
after an interruption.
Then train with ``data.cache=DIR``.
"""

from __future__ import annotations

from joint_colsr.run.fast_help import answer_help_early

answer_help_early(__name__, 'preprocess')  # before torch/Lightning are imported (run/fast_help.py)

import logging
from typing import Any

from omegaconf import DictConfig, OmegaConf

from joint_colsr.assembly import build_datamodule
from joint_colsr.run.config_checks import ConfigError, hydra_command
from joint_colsr.data.cache import ImageCache, build_cache, summarize

log = logging.getLogger(__name__)


def preprocess(cfg: DictConfig) -> dict[str, Any]:
    """Build (or resume) the cache described by ``cfg``; return its index."""
    if OmegaConf.is_missing(cfg, "cache_dir") or not cfg.cache_dir:
        raise ConfigError("cache_dir must be set: python -m joint_colsr.preprocess data=... cache_dir=DIR")
    missing = sorted(str(k) for k in cfg.data if OmegaConf.is_missing(cfg.data, k))
    if missing:
        raise ConfigError(f"{', '.join(f'data.{k}' for k in missing)} must be set for this data source (e.g. data.root=DIR)")
    if cfg.verify not in ("quick", "full", "none"):
        raise ConfigError(f"verify must be quick, full or none, got {cfg.verify!r}")
    datamodule = build_datamodule(cfg)
    index = build_cache(
        datamodule.source,
        cfg.cache_dir,
        output_size=datamodule.output_size,
        train_size=cfg.train_size,
        val_views=int(cfg.val_views),
        shard_size=int(cfg.shard_size),
        num_workers=int(cfg.num_workers),
        splits=list(cfg.splits),
        overwrite=bool(cfg.overwrite),
        progress=bool(cfg.progress),
        **datamodule.filters,
    )
    print(f"cache {cfg.cache_dir}:\n{summarize(index)}")
    if cfg.verify != "none":
        ImageCache.open(cfg.cache_dir, verify=cfg.verify, splits=list(cfg.splits))
        print(f"verified ({cfg.verify}); train with data.cache={cfg.cache_dir}")
    return index


@hydra_command("preprocess")
def main(cfg: DictConfig) -> None:
    preprocess(cfg)


if __name__ == "__main__":
    main()
