"""The paper's cascade, as it poses it: two networks trained separately, then composed.

``python -m joint_colsr.two_stage order=colorize_first|upscale_first [overrides=[...]]``
(config: ``conf/two_stage.yaml``) runs, into its run directory (each stage in this process,
``run/in_process.py``, exactly as the console command would run it):

1. ``colorizer/``: ``python -m joint_colsr.train model=ic_only`` (the colorizer, on L*);
2. ``upscaler/``: ``python -m joint_colsr.train model=sr_only`` (SRResNet on L*);
3. ``cascade/checkpoints/last.ckpt``: the two composed into a
   :class:`~joint_colsr.nets.CascadeNet` with both stages frozen (``training_kind``
   ``two-stage``), a checkpoint ``eval`` and ``predict`` take like any other;
4. with ``finetune_epochs=N``: ``finetuned/``, the composed cascade trained N more epochs
   end to end (both stages unfrozen, starting from the two stages' weights).

``colorize_first`` colorizes at the input size, super-resolves L* with the ``sr_only`` net
and upscales a*b* bicubically (``ab_upscale=bicubic``: the SR convention for colour);
``upscale_first`` super-resolves L* first and colorizes at the target size. Each colorizer
is trained at the scale it runs at in the cascade (:func:`colorizer_sizes`): for
``upscale_first`` on L* at the output size (``data.input_size`` = ``data.output_size``,
ground-truth L* there; global features from the input size), since in the cascade it
colours the super-resolved L*. Both stages
are trained with ``overrides`` (data, trainer, debug, seed: the same for each) plus their
own ``colorizer_overrides`` / ``upscaler_overrides``; ``two_stage.json`` records what ran.
"""

from __future__ import annotations

from joint_colsr.run.fast_help import answer_help_early

answer_help_early(__name__, 'two_stage')  # before torch/Lightning are imported (run/fast_help.py)

import json
import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from omegaconf import DictConfig

from joint_colsr import CONFIG_DIR
from joint_colsr.run.checkpointing import read_checkpoint
from joint_colsr.run.config_checks import ConfigError, hydra_command
from joint_colsr.run.in_process import CommandFailed, run_command
from joint_colsr.train import main as train_command
from joint_colsr.nets.cascade import ORDERS

log = logging.getLogger(__name__)

#: Keys of a stage's net config that the cascade sets itself.
_SET_BY_CASCADE = ("_target_", "input_size", "output_size", "global_input_size", "in_channels", "out_channels")


def _train(run_dir: Path, overrides: list[str]) -> Path:
    """One ``train`` run into ``run_dir``, in this process (:mod:`joint_colsr.run.in_process`); its ``last.ckpt``."""
    args = [*overrides, f"hydra.run.dir={run_dir}"]
    log.info("two_stage: python -m joint_colsr.train %s", " ".join(args))
    try:
        run_command(train_command, args)
    except CommandFailed:
        raise RuntimeError(f"two_stage: the stage run {run_dir} failed; its error is above") from None
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        raise RuntimeError(f"two_stage: {run_dir} left no checkpoints/last.ckpt")
    return ckpt


def _hparams(ckpt: Path) -> dict[str, Any]:
    return read_checkpoint(ckpt)["hyper_parameters"]


def _stage_kwargs(net_cfg: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in net_cfg.items() if k not in _SET_BY_CASCADE}


def colorizer_sizes(order: str, input_size: int, output_size: int) -> dict[str, int]:
    """The sizes the colorizer stage is trained at: those it runs at inside the cascade.
    ``colorize_first``: L* at the input size (a*b* then upscaled); ``upscale_first``: the
    super-resolved L* at the output size, global features from the input size, as
    :class:`~joint_colsr.nets.CascadeNet` builds it."""
    if order == "colorize_first":
        return {"input_size": input_size, "output_size": output_size, "global_input_size": input_size}
    return {"input_size": output_size, "output_size": output_size, "global_input_size": input_size}


def colorizer_stage_overrides(order: str, input_size: int, output_size: int) -> list[str]:
    """``train`` overrides that make the ``ic_only`` stage see L* at the scale it will see in
    the cascade (:func:`colorizer_sizes`); none for ``colorize_first``."""
    if order == "colorize_first":
        return []
    sizes = colorizer_sizes(order, input_size, output_size)
    return [f"data.input_size={sizes['input_size']}", f"++model.net.global_input_size={sizes['global_input_size']}"]


def _data_sizes(overrides: list[str]) -> tuple[int, int]:
    """``(data.input_size, data.output_size)`` of the train config under ``overrides``."""
    from hydra import compose as compose_config, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():  # inside the two_stage command: the same config tree
        cfg = compose_config(config_name="train", overrides=overrides)
    else:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose_config(config_name="train", overrides=overrides)
    return int(cfg.data.input_size), int(cfg.data.output_size)


def cascade_net_config(order: str, colorizer_ckpt: Path, upscaler_ckpt: Path, freeze: bool = True) -> dict[str, Any]:
    """The ``CascadeNet`` config composing an ``ic_only`` and an ``sr_only`` checkpoint."""
    colorizer, upscaler = _hparams(colorizer_ckpt)["net"], _hparams(upscaler_ckpt)["net"]
    if not colorizer["_target_"].endswith("IizukaColorizer") or not upscaler["_target_"].endswith("SROnlyNet"):
        raise ConfigError(f"two_stage needs an ic_only colorizer and an sr_only upscaler, got {colorizer['_target_']} "
                          f"and {upscaler['_target_']}")
    r, s = upscaler["input_size"], upscaler["output_size"]
    trained = (colorizer["input_size"], colorizer["output_size"], colorizer.get("global_input_size") or colorizer["input_size"])
    wanted = colorizer_sizes(order, r, s)
    if trained != tuple(wanted.values()):
        raise ConfigError(f"order={order} needs a colorizer trained with {wanted} (the sizes it runs at in the cascade), "
                          f"got {dict(zip(wanted, trained))}; train it with colorizer_stage_overrides")
    c_kwargs = {k: v for k, v in _stage_kwargs(colorizer).items() if k != "output_resize"}
    return {
        "_target_": "joint_colsr.nets.CascadeNet",
        "input_size": r,
        "output_size": s,
        "order": order,
        "ab_upscale": "bicubic" if order == "colorize_first" else "net",
        "colorizer": c_kwargs,
        "upscaler": _stage_kwargs(upscaler),
        "colorizer_checkpoint": str(colorizer_ckpt),
        "upscaler_checkpoint": str(upscaler_ckpt),
        "freeze_colorizer": freeze,
        "freeze_upscaler": freeze,
    }


def compose(order: str, colorizer_ckpt: Path, upscaler_ckpt: Path, out_ckpt: Path) -> Path:
    """Write the frozen two-stage cascade as a checkpoint of :class:`ColSRSystem`.

    The weights are in the checkpoint itself: its hyper-parameters name no stage file
    (the cascade is rebuilt from them, then the state dict fills it), so it can be copied
    anywhere.
    """
    from joint_colsr.systems import ColSRSystem

    net = cascade_net_config(order, colorizer_ckpt, upscaler_ckpt)
    upscaler_hp = _hparams(upscaler_ckpt)
    system = ColSRSystem(net=net, optimizer=_hparams(colorizer_ckpt)["optimizer"], scheduler=None,
                         l_loss_weight=upscaler_hp.get("l_loss_weight", 1.0))
    hparams = dict(system.hparams)
    hparams["net"] = {**net, "colorizer_checkpoint": None, "upscaler_checkpoint": None}
    out_ckpt.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": system.state_dict(), "hyper_parameters": hparams, "epoch": 0, "global_step": 0,
                "pytorch-lightning_version": pl.__version__}, out_ckpt)
    return out_ckpt


def _override_value(value: Any) -> str:
    """A Python value in Hydra's override grammar (flow dicts and lists, quoted strings)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_override_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_override_value(v) for v in value) + "]"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def two_stage(cfg: DictConfig) -> dict[str, Any]:
    if cfg.order not in ORDERS:
        raise ConfigError(f"order must be one of {', '.join(ORDERS)}, got {cfg.order!r}")
    out = Path(str(cfg.paths.output_dir)).absolute()
    common = [str(o) for o in cfg.overrides] + [f"seed={cfg.seed}"]
    at_scale = colorizer_stage_overrides(cfg.order, *_data_sizes(["model=ic_only", *common]))
    colorizer = _train(out / "colorizer", ["model=ic_only", *common, *at_scale, *map(str, cfg.colorizer_overrides)])
    upscaler = _train(out / "upscaler", ["model=sr_only", *common, *map(str, cfg.upscaler_overrides)])
    cascade = compose(cfg.order, colorizer, upscaler, out / "cascade" / "checkpoints" / "last.ckpt")
    record: dict[str, Any] = {"order": cfg.order, "colorizer": str(colorizer), "upscaler": str(upscaler), "cascade": str(cascade),
                              "stage_metrics": {name: json.loads((ckpt.parent.parent / "metrics.json").read_text())
                                                for name, ckpt in (("colorizer", colorizer), ("upscaler", upscaler))}}
    if int(cfg.finetune_epochs) > 0:
        net = cascade_net_config(cfg.order, colorizer, upscaler, freeze=False)
        record["finetuned"] = str(_train(out / "finetuned", [
            "model=cascade", *common, "~model.net", f"+model.net={_override_value(net)}",
            f"trainer.max_epochs={int(cfg.finetune_epochs)}",
        ]))
    (out / "two_stage.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"two-stage cascade ({cfg.order}): {cascade}" + (f"; fine-tuned end to end: {record['finetuned']}" if "finetuned" in record else "")
          + f"\nevaluate it: python -m joint_colsr.eval ckpt_path={cascade} data=...")
    return record


@hydra_command("two_stage")
def main(cfg: DictConfig) -> None:
    two_stage(cfg)


if __name__ == "__main__":
    main()
