"""Parameters and forward FLOPs of every ``model=`` option: ``python -m joint_colsr.model_table``.

Builds each model config in ``conf/model/`` at its defaults (``data.input_size`` 96,
``data.output_size`` 256) through the suite's one builder, counts trainable parameters and
the FLOPs of one forward pass of one image with ``torch.utils.flop_counter`` (on the meta
device: nothing is computed, so it takes seconds), and writes the table to
``docs/models.md`` and between the markers in ``README.md``. A second table in
``docs/models.md`` gives the any-scale variants (``model.net.upsampler=implicit``) per output
size, from x1.5 to x4 of a 96-pixel input.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch, Hydra and the builder are imported where used, so `--help` is instant
    from torch import nn

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"
BEGIN, END = "<!-- model-table:begin -->", "<!-- model-table:end -->"
#: Any-scale rows: (``model=``, overrides); and the output sides of their FLOPs columns (96-pixel input).
ANY_SCALE_MODELS = (("joint_paper", ["model.net.upsampler=implicit"]), ("residual_joint", ["model.net.upsampler=implicit"]))
ANY_SCALE_SIDES = (144, 192, 256, 288, 384)


def model_names() -> list[str]:
    """The ``model=`` options, in the order of the issue (then any others)."""
    order = ["joint_paper", "ic_only", "sr_only", "cascade", "residual_joint", "srgan", "joint_exemplar"]
    found = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
    return [n for n in order if n in found] + [n for n in found if n not in order]


def forward_flops(net: nn.Module, input_size: int, output_size: int, steered: bool = True) -> int:
    """FLOPs of one forward pass of one image (a multiply-add counts 2), on the meta device;
    an any-scale net is asked for ``output_size`` (a fixed-scale one makes its own). An exemplar
    net is counted steered by an exemplar of the output's size, or (``steered=False``) in
    automatic mode, which costs less."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from joint_colsr.systems import call_net

    net = net.to("meta").eval()
    l_highres = torch.zeros(1, 1, output_size, output_size, device="meta")
    steered = steered and getattr(net, "takes_exemplar", False)
    exemplar = torch.zeros(1, 3, output_size, output_size, device="meta") if steered else None
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        call_net(net, torch.zeros(1, 1, input_size, input_size, device="meta"), l_highres, (output_size, output_size), exemplar)
    return counter.get_total_flops()


def _system(name: str, overrides: list[str] | None = None):  # type: ignore[no-untyped-def]
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from joint_colsr.assembly import build_system

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"model={name}", *(overrides or [])])
    return cfg, build_system(cfg)


def describe_any_scale(name: str, overrides: list[str], sides: tuple[int, ...] = ANY_SCALE_SIDES) -> dict[str, object]:
    """An any-scale row: network, parameters, forward GFLOPs at each output side of ``sides``."""
    from joint_colsr.nets import count_parameters

    cfg, system = _system(name, overrides)
    r = cfg.data.input_size
    return {"model": f"{name} {' '.join(overrides)}", "network": type(system.net).__name__,
            "params": count_parameters(system.net),
            "gflops": {side: forward_flops(system.net, r, side) / 1e9 for side in sides}}


def any_scale_markdown(rows: list[dict[str, object]], input_size: int = 96) -> str:
    sides = list(rows[0]["gflops"]) if rows else []  # type: ignore[arg-type]
    head = " | ".join(f"x{side / input_size:.3g} ({side})" for side in sides)
    lines = [f"| model | network | parameters (M) | {head} |", "| --- | --- | ---: |" + " ---: |" * len(sides)]
    for row in rows:
        cells = " | ".join(f"{row['gflops'][side]:.2f}" for side in sides)  # type: ignore[index]
        lines.append(f"| `{row['model']}` | {row['network']} | {row['params'] / 1e6:.2f} | {cells} |")
    return "\n".join(lines)


def describe(name: str) -> dict[str, object]:
    """One row: the model's network, parameters, forward GFLOPs (and its discriminator, for GANs)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from joint_colsr.nets import count_parameters

    cfg, system = _system(name)
    r, s = cfg.data.input_size, cfg.data.output_size
    row: dict[str, object] = {
        "model": name,
        "network": type(system.net).__name__,
        "params": count_parameters(system.net),
        "gflops": forward_flops(system.net, r, s) / 1e9,
        "notes": "with a 256x256 exemplar" if getattr(system.net, "takes_exemplar", False) else "",
    }
    discriminator = getattr(system, "discriminator", None)
    if discriminator is not None:
        d = discriminator.to("meta").eval()
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            d(torch.zeros(1, d.in_channels, s, s, device="meta"))
        row["notes"] = (f"+ {type(d).__name__} {count_parameters(d) / 1e6:.2f} M params, "
                        f"{counter.get_total_flops() / 1e9:.2f} GFLOPs (training only)")
    return row


def markdown(rows: list[dict[str, object]]) -> str:
    lines = [
        "| `model=` | network | parameters (M) | forward GFLOPs / image | notes |",
        "| --- | --- | ---: | ---: | --- |",
    ]
    for row in rows:
        lines.append(f"| `{row['model']}` | {row['network']} | {row['params'] / 1e6:.2f} | {row['gflops']:.2f} | {row['notes']} |")
    return "\n".join(lines)


def replace_between_markers(text: str, table: str) -> str:
    if BEGIN not in text or END not in text:
        raise ValueError(f"README.md must contain the markers {BEGIN} and {END}")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{table}\n{END}{tail}"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=Path, default=REPO / "docs" / "models.md")
    parser.add_argument("--readme", type=Path, default=REPO / "README.md")
    args = parser.parse_args(argv)
    table = markdown([describe(name) for name in model_names()])
    header = (
        "# Model variants\n\n"
        "Generated by `python -m joint_colsr.model_table` (do not edit by hand): every `model=` option "
        "at its defaults, input L* 96x96, output 256x256. Parameters are trainable parameters of the "
        "network that runs at inference; GFLOPs count one forward pass of one image "
        "(`torch.utils.flop_counter`, a multiply-add = 2 FLOPs).\n\n"
    )
    any_scale = any_scale_markdown([describe_any_scale(name, overrides) for name, overrides in ANY_SCALE_MODELS])
    any_scale_header = (
        "\n## Any-scale variants (`model.net.upsampler=implicit`)\n\n"
        "One model for every output size (docs/architecture.md, \"Continuous magnification\"): forward GFLOPs "
        "of one image per output side, input 96x96. The implicit upsampler's cost grows with the output's pixels; "
        "the encoder's does not.\n\n"
    )
    args.docs.parent.mkdir(parents=True, exist_ok=True)
    args.docs.write_text(header + table + "\n" + any_scale_header + any_scale + "\n")
    args.readme.write_text(replace_between_markers(args.readme.read_text(), table))
    print(table)
    return table


if __name__ == "__main__":
    main()
