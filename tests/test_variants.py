"""The ablation variants (ic_only, sr_only, cascade, residual_joint, srgan): shapes, gradients, training."""

from __future__ import annotations

import shutil

import pytest
import torch
from torch import nn

from joint_colsr.assembly import build_eval_system, build_system
from joint_colsr.color import resize_bicubic, upscale_l
from joint_colsr.run.config_checks import ConfigError
from joint_colsr.model_table import BEGIN, END, markdown, model_names, replace_between_markers
from joint_colsr.nets import (
    CascadeNet,
    IizukaColorizer,
    ResidualJointNet,
    SRResNet,
    VGG19Features,
    load_stage_weights,
    pixel_shuffle_factors,
)
from joint_colsr.nets.vgg import VGG19_LAYOUT
from joint_colsr.systems import ColSRSystem, GANSystem
from joint_colsr.train import train

from .conftest import REPO, compose_config

VARIANTS = ["ic_only", "sr_only", "cascade", "cascade_upscale_first", "residual_joint", "residual_joint_gt",
            "residual_joint_interpolated", "srgan"]
#: Overrides that make each variant tiny (widths 1/16, one residual block).
TINY = {
    "ic_only": ["model=ic_only"],
    "sr_only": ["model=sr_only", "model.net.blocks=1"],
    "cascade": ["model=cascade", "model.net.upscaler.blocks=1"],
    "cascade_upscale_first": ["model=cascade", "model.net.upscaler.blocks=1", "model.net.order=upscale_first"],
    "residual_joint": ["model=residual_joint", "model.net.blocks=1"],
    "residual_joint_gt": ["model=residual_joint", "model.net.blocks=1", "model.net.l_source=gt"],
    "residual_joint_interpolated": ["model=residual_joint", "model.net.blocks=1", "model.net.l_source=interpolated"],
    "srgan": ["model=srgan", "model.net.blocks=1", "model.discriminator.width_mult=0.0625",
              "model.discriminator_warmup_steps=0", "model.discriminator_warmup_fraction=null"],
}
PREDICTS_L = {"sr_only", "cascade", "cascade_upscale_first", "residual_joint", "srgan", "residual_joint_interpolated"}


def _overrides(variant: str, *extra: str) -> list[str]:
    return [*TINY[variant], "model.net.width_mult=0.0625", *extra]


def _batch(r: int, s: int, n: int = 2, labels: int | None = None) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    batch = {
        "l_lowres": torch.rand(n, 1, r, r, generator=g) * 2 - 1,
        "l_highres": torch.rand(n, 1, s, s, generator=g) * 2 - 1,
        "ab_target": (torch.rand(n, 2, s, s, generator=g) - 0.5) * 0.8,
        "rgb_target": torch.randint(0, 256, (n, 3, s, s), generator=g, dtype=torch.uint8),
    }
    if labels:
        batch["labels"] = (torch.rand(n, labels, generator=g) > 0.8).float()
    return batch


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("sizes", [(96, 256), (64, 128)])
def test_output_shapes(variant, sizes, compose_cfg):
    r, s = sizes
    system = build_system(compose_cfg(_overrides(variant, f"data.input_size={r}", f"data.output_size={s}")))
    out = system.eval().infer(_batch(r, s))
    assert out["ab"].shape == (2, 2, s, s)
    assert ("l" in out) == (variant in PREDICTS_L)
    if "l" in out:
        assert out["l"].shape == (2, 1, s, s)


def _trainable_without_gradient(module: nn.Module) -> list[str]:
    return [n for n, p in module.named_parameters() if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)]


@pytest.mark.parametrize("variant", [*VARIANTS, "ic_only_classification"])
def test_gradients_reach_every_trainable_parameter(variant, compose_cfg):
    extra = ["model.net.classification=true", "model.net.num_classes=5"] if variant == "ic_only_classification" else []
    batch = _batch(64, 128, labels=5 if extra else None)
    system = build_system(compose_cfg(_overrides(variant.replace("_classification", ""), *extra,
                                                 "data.input_size=64", "data.output_size=128")))
    params = [p for p in system.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.1)
    # Zero-initialized heads pass no gradient back on the first step; after one update all do.
    for _ in range(2):
        opt.zero_grad()
        out = system.infer(batch)
        if isinstance(system, GANSystem):
            loss = system.generator_losses(out, batch)["loss"]
            real = system.lab_image(batch["l_highres"], batch["ab_target"])
            fake = system.lab_image(out.get("l", batch["l_highres"]), out["ab"]).detach()
            loss = loss + system.discriminator_losses(real, fake)["d_loss"]
        else:
            loss = system.supervised_losses(out, batch)["loss"]
        loss.backward()
        opt.step()
    assert not _trainable_without_gradient(system)
    if extra:
        assert "logits" in out and out["logits"].shape == (2, 5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_fast_dev_run(variant, compose_cfg):
    metrics = train(compose_cfg(_overrides(variant, "debug=fdr", "data.batch_size=2")))
    assert torch.isfinite(torch.tensor(metrics["val/psnr"]))
    if variant in PREDICTS_L:
        assert torch.isfinite(torch.tensor(metrics["val/psnr_joint"]))
        assert metrics["train/loss_l" if variant != "srgan" else "train/g_pixel_l"] >= 0
    if variant == "srgan":
        # Two optimizers step per batch under manual optimization.
        assert metrics["global_step"] == 2
        for key in ("train/g_adv", "train/d_loss", "train/d_real", "train/d_fake"):
            assert torch.isfinite(torch.tensor(metrics[key])), key
        assert 0 < metrics["train/d_real"] < 1 and 0 < metrics["train/d_fake"] < 1
    else:
        assert metrics["global_step"] == 1


def test_sr_only_predicts_gray_colour_and_scores_the_gray_baseline(compose_cfg):
    metrics = train(compose_cfg(_overrides("sr_only", "debug=fdr", "data.batch_size=2")))
    assert metrics["val/psnr"] == pytest.approx(metrics["val/psnr_gray"])


def test_classification_without_labels_fails_clearly(compose_cfg):
    cfg = compose_cfg(_overrides("ic_only", "debug=fdr", "data.batch_size=2", "model.net.classification=true"))
    with pytest.raises(ValueError, match="labels"):
        train(cfg)


def test_classification_labels_must_match_num_classes():
    system = ColSRSystem(
        net={"_target_": "joint_colsr.nets.IizukaColorizer", "input_size": 64, "output_size": 128,
             "width_mult": 0.0625, "classification": True, "num_classes": 5},
        optimizer={"_target_": "torch.optim.Adam", "_partial_": True},
    )
    batch = _batch(64, 128, labels=7)
    with pytest.raises(ValueError, match="num_classes"):
        system.supervised_losses(system.infer(batch), batch)


def test_classification_loss_has_its_own_weight():
    net_cfg = {"_target_": "joint_colsr.nets.IizukaColorizer", "input_size": 64, "output_size": 128,
               "width_mult": 0.0625, "classification": True, "num_classes": 5}
    opt = {"_target_": "torch.optim.Adam", "_partial_": True}
    batch = _batch(64, 128, labels=5)
    torch.manual_seed(0)
    a = ColSRSystem(net_cfg, opt, classification_loss_weight=0.0).eval()
    b = ColSRSystem(net_cfg, opt, classification_loss_weight=2.0).eval()
    b.load_state_dict(a.state_dict())
    la, lb = a.supervised_losses(a.infer(batch), batch), b.supervised_losses(b.infer(batch), batch)
    assert la["loss"].item() == pytest.approx(la["loss_ab"].item())
    assert lb["loss"].item() == pytest.approx(lb["loss_ab"].item() + 2.0 * lb["loss_cls"].item())


def test_pixel_shuffle_plan():
    assert pixel_shuffle_factors(4) == ([2, 2], False)
    assert pixel_shuffle_factors(3) == ([3], False)
    assert pixel_shuffle_factors(6) == ([2, 3], False)
    assert pixel_shuffle_factors(256 / 96) == ([2, 2], True)  # x8/3: to x4, then resize
    assert pixel_shuffle_factors(5) == ([2, 2, 2], True)


def test_srresnet_starts_at_bicubic_and_scales_any_input():
    net = SRResNet(96, 256, width=8, blocks=1).eval()
    x = torch.rand(1, 1, 48, 72) * 2 - 1
    out = net(x)
    assert out.shape == (1, 1, 128, 192)
    assert torch.allclose(out, resize_bicubic(x, (128, 192)))
    with pytest.raises(ValueError, match="input_residual"):
        SRResNet(in_channels=1, out_channels=3)


def test_iizuka_global_path_fixed_size_and_bad_args():
    net = IizukaColorizer(96, 256, width_mult=0.0625).eval()
    assert net(torch.randn(1, 1, 128, 80)).shape == (1, 2, 341, 213)  # any size: global path sees 96x96
    with pytest.raises(ValueError, match="output_resize"):
        IizukaColorizer(output_resize="lanczos")
    with pytest.raises(ValueError, match="global_input_size"):
        IizukaColorizer(global_input_size=16)


def test_residual_joint_checks_its_guide():
    with pytest.raises(ValueError, match="l_source"):
        ResidualJointNet(l_source="oracle")
    net = ResidualJointNet(64, 128, l_source="gt", blocks=1, width_mult=0.0625)
    assert net.needs_l_highres
    with pytest.raises(ValueError, match="l_highres"):
        net(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match="l_highres"):
        net(torch.randn(1, 1, 64, 64), l_highres=torch.randn(1, 1, 100, 100))
    # The predicted L* starts as the bicubic input.
    pred = ResidualJointNet(64, 128, l_source="predicted", blocks=1, width_mult=0.0625).eval()
    x = torch.rand(1, 1, 64, 64) * 2 - 1
    assert torch.allclose(pred(x)["l"], upscale_l(x, (128, 128)))
    # The interpolated guide is the L* the net delivers.
    interp = ResidualJointNet(64, 128, l_source="interpolated", blocks=1, width_mult=0.0625).eval()
    assert torch.equal(interp(x)["l"], upscale_l(x, (128, 128)))


def test_cascade_loads_and_freezes_a_stage(tmp_path):
    sr_only = ColSRSystem(
        net={"_target_": "joint_colsr.nets.SROnlyNet", "input_size": 64, "output_size": 128, "blocks": 1, "width_mult": 0.0625},
        optimizer={"_target_": "torch.optim.Adam", "_partial_": True},
    )
    for p in sr_only.parameters():
        nn.init.normal_(p) if p.dim() > 1 else None
    path = tmp_path / "sr_only.ckpt"
    torch.save({"state_dict": sr_only.state_dict()}, path)

    net = CascadeNet(64, 128, order="upscale_first", width_mult=0.0625, upscaler={"blocks": 1},
                     upscaler_checkpoint=str(path), freeze_upscaler=True)
    frozen = {k: v.clone() for k, v in net.upscaler.state_dict().items()}
    assert all(torch.equal(frozen[k], v) for k, v in sr_only.net.sr.state_dict().items())
    assert not any(p.requires_grad for p in net.upscaler.parameters())
    net.train()
    assert not net.upscaler.training and net.colorizer.training
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        out = net(torch.randn(2, 1, 64, 64))
        (out["ab"].pow(2).mean() + out["l"].pow(2).mean()).backward()
        opt.step()
    assert all(torch.equal(frozen[k], v) for k, v in net.upscaler.state_dict().items())  # BN statistics too
    # A 3-channel upscaler (colorize_first) cannot take sr_only weights: the error says why.
    with pytest.raises(ValueError, match="upscaler_checkpoint"):
        CascadeNet(64, 128, width_mult=0.0625, upscaler={"blocks": 1}, upscaler_checkpoint=str(path))
    with pytest.raises(FileNotFoundError, match="colorizer_checkpoint"):
        load_stage_weights(net.colorizer, tmp_path / "missing.ckpt", "colorizer")


def _random_vgg19_file(path, layers: int = 2) -> None:
    """A torchvision-layout VGG19 state dict with random weights for the first ``layers`` convs."""
    state, index, prev, done = {}, 0, 3, 0
    for item in VGG19_LAYOUT:
        if done == layers:
            break
        if item == "M":
            index += 1
            continue
        state[f"features.{index}.weight"] = torch.randn(item, prev, 3, 3) * 0.1
        state[f"features.{index}.bias"] = torch.zeros(item)
        prev, index, done = item, index + 2, done + 1
    torch.save(state, path)


def test_vgg19_features_load_a_local_file_only(tmp_path):
    path = tmp_path / "vgg19.pth"
    _random_vgg19_file(path, layers=2)
    vgg = VGG19Features(path, layer="relu1_2")
    assert vgg(torch.rand(1, 3, 32, 32)).shape == (1, 64, 32, 32)
    assert not any(p.requires_grad for p in vgg.parameters())
    with pytest.raises(ValueError, match="features"):
        VGG19Features(path, layer="relu2_2")  # the file lacks conv2_*
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        VGG19Features(tmp_path / "absent.pth")


def test_srgan_tiny_run_with_ema_perceptual_schedulers_and_resume(compose_cfg, tmp_path):
    vgg = tmp_path / "vgg19.pth"
    _random_vgg19_file(vgg, layers=1)
    overrides = _overrides(
        "srgan", "debug=tiny", "data.batch_size=2", "callbacks.model_summary.max_depth=1", "model.ema_decay=0.9",
        f"model.perceptual_weights_path={vgg}", "model.perceptual_layer=relu1_1",
        "~model.scheduler", "+model.scheduler={_target_: torch.optim.lr_scheduler.StepLR, _partial_: true, step_size: 1, gamma: 0.5}",
        "model.scheduler_interval=step",
    )
    cfg = compose_cfg(overrides)
    metrics = train(cfg)
    assert metrics["global_step"] == 4  # 2 batches x 2 optimizers
    assert torch.isfinite(torch.tensor(metrics["train/g_perceptual"]))
    ckpt = torch.load(metrics["last_ckpt"], map_location="cpu", weights_only=False)
    assert [s["last_epoch"] for s in ckpt["lr_schedulers"]] == [2, 2]  # both schedulers stepped per batch
    assert [o["param_groups"][0]["lr"] for o in ckpt["optimizer_states"]] == pytest.approx([2.5e-5, 2.5e-5])
    assert not any(k.startswith("perceptual.") for k in ckpt["state_dict"])  # VGG stays in its own file
    assert GANSystem.load_from_checkpoint(metrics["last_ckpt"], map_location="cpu").perceptual is not None
    system = GANSystem.load_from_checkpoint(metrics["last_ckpt"], map_location="cpu", perceptual_weights_path=None)
    assert int(system.generator_steps) == 2
    assert system.eval_net is system.net_ema.module
    assert not torch.equal(next(system.net_ema.module.parameters()), next(system.net.parameters()))
    x = torch.rand(1, 1, 96, 96) * 2 - 1
    with torch.no_grad():
        assert torch.equal(system.eval()(x), system.net_ema.module(x)["ab"])  # eval mode runs the EMA

    # Resume: optimizers, schedulers and the warm-up counter continue.
    resumed = train(compose_cfg([*overrides, "trainer.max_epochs=2", f"ckpt_path={metrics['last_ckpt']}"]))
    assert resumed["global_step"] == 8
    ckpt = torch.load(resumed["last_ckpt"], map_location="cpu", weights_only=False)
    assert int(ckpt["state_dict"]["generator_steps"]) == 4
    assert [s["last_epoch"] for s in ckpt["lr_schedulers"]] == [4, 4]

    # Shared: a checkpoint copied out of its run folder rebuilds its own system class and
    # data task, with no model=srgan and no VGG file (inference needs no perceptual loss).
    shared = tmp_path / "shared" / "model.ckpt"
    shared.parent.mkdir()
    shutil.copy(resumed["last_ckpt"], shared)
    vgg.unlink()
    loaded = ColSRSystem.from_checkpoint(shared, inference=True)
    assert type(loaded) is GANSystem and loaded.perceptual is None
    assert loaded.data_task == {"input_size": 96, "output_size": 256, "lowres_interpolation": "bicubic", "with_labels": False,
                               "filters": {"exclude_grayscale": True, "min_side": 16, "max_aspect": 10.0}, "scale_range": None,
                               "exemplar_size": 256}
    eval_cfg = compose_config("eval", [f"ckpt_path={shared}", "data.input_size=64"])
    assert type(build_eval_system(eval_cfg)) is GANSystem and eval_cfg.data.input_size == 96
    # A checkpoint written before checkpoints named their class: told apart by its hyper-parameters.
    old = torch.load(shared, map_location="cpu", weights_only=False)
    del old["system_class"], old["data_task"]
    torch.save(old, shared)
    loaded = ColSRSystem.from_checkpoint(shared, inference=True)
    assert type(loaded) is GANSystem and loaded.data_task == {"input_size": 96, "output_size": 256}
    # Resuming it into another system class names the model= to add.
    with pytest.raises(ConfigError, match=r"written by a GANSystem, but this config builds a ColSRSystem \(add model=srgan"):
        train(compose_cfg(["debug=tiny", f"ckpt_path={shared}"]))


def test_srgan_warmup_keeps_adversarial_loss_off(compose_cfg):
    metrics = train(compose_cfg(_overrides("srgan", "debug=fdr", "data.batch_size=2", "model.discriminator_warmup_steps=5",
                                       "model.discriminator_warmup_fraction=null")))
    assert "train/g_adv" not in metrics and "train/d_loss" in metrics


def test_srgan_warmup_scales_with_the_run_so_the_default_run_is_adversarial(compose_cfg, caplog):
    # the shipped srgan config: warm-up 10 % of the run's generator steps (max_steps counts both optimizers)
    shipped = [o for o in TINY["srgan"] if "warmup" not in o]
    cfg = compose_cfg([*shipped, "model.net.width_mult=0.0625", "debug=tiny", "trainer.limit_train_batches=20",
                       "data.train_samples_per_epoch=80", "++trainer.max_steps=40", "trainer.max_epochs=-1"])
    with caplog.at_level("INFO", logger="joint_colsr.systems.gan"):
        metrics = train(cfg)
    assert "discriminator warm-up 2 of 20 generator steps" in caplog.text
    assert metrics["train/g_adv"] > 0  # the adversarial term reached the generator
    with pytest.raises(ValueError, match="set one of model.discriminator_warmup_steps and model.discriminator_warmup_fraction"):
        train(compose_cfg([*shipped, "debug=tiny", "model.discriminator_warmup_steps=5"]))


def test_model_table_lists_every_variant():
    names = model_names()
    assert names[:6] == ["joint_paper", "ic_only", "sr_only", "cascade", "residual_joint", "srgan"]
    table = markdown([{"model": "x", "network": "Net", "params": 1_500_000, "gflops": 2.5, "notes": ""}])
    assert "| `x` | Net | 1.50 | 2.50 |" in table
    text = replace_between_markers(f"a\n{BEGIN}\nold\n{END}\nb", table)
    assert "old" not in text and table in text and text.startswith("a\n") and text.endswith("\nb")
    with pytest.raises(ValueError, match="markers"):
        replace_between_markers("no markers", table)


@pytest.mark.parametrize("name", ["joint_paper", "residual_joint"])
def test_model_table_rows_match_the_published_table(name):
    # describe() builds the full-width net and counts FLOPs on the meta device: every layer
    # (the shared bicubic included) must run there, and the README's row must be current.
    from joint_colsr.model_table import describe

    row = markdown([describe(name)]).splitlines()[-1]
    assert row in (REPO / "README.md").read_text(), f"README's model table is stale: python -m joint_colsr.model_table ({row})"


def test_srgan_trains_another_generator(compose_cfg):
    # The override README documents for swapping the generator.
    cfg = compose_cfg(["model=srgan", "~model.net", "+model.net={_target_: joint_colsr.nets.JointPaperNet, width_mult: 0.0625}",
                       "model.discriminator.width_mult=0.0625",
                       "model.discriminator_warmup_steps=0", "model.discriminator_warmup_fraction=null",
                       "debug=fdr", "data.batch_size=2"])
    metrics = train(cfg)
    assert cfg.model.net._target_.endswith("JointPaperNet") and "train/g_adv" in metrics
    assert "val/loss_l" not in metrics  # the paper net has no L* of its own: D sees ground-truth L*


def test_srgan_leaves_out_the_ema_callback_and_keeps_its_own(compose_cfg):
    from lightning.pytorch.callbacks import WeightAveraging

    from joint_colsr.assembly import build_callbacks, build_system

    cfg = compose_cfg(_overrides("srgan", "debug=tiny", "callbacks=ema"))
    assert any(isinstance(c, WeightAveraging) for c in build_callbacks(cfg))
    assert not any(isinstance(c, WeightAveraging) for c in build_callbacks(cfg, build_system(cfg)))
    plain = compose_cfg(["debug=tiny", "callbacks=ema"])
    assert any(isinstance(c, WeightAveraging) for c in build_callbacks(plain, build_system(plain)))


def test_model_selection_sees_every_output(compose_cfg):
    """val/loss is the training objective (every term); the best checkpoint and Optuna follow
    the whole joint output (protocol 2); a GT-L*-guided net, with no own L*, falls back to protocol 1."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from joint_colsr.assembly import build_callbacks

    cfg = compose_cfg(["model=sr_only", "debug=tiny", "model.net.blocks=1", "model.l_loss_weight=2.0"])
    metrics = train(cfg)
    # sr_only's a*b* are always 0: only the L* term can move val/loss (it used to be the a*b* MSE alone).
    assert metrics["val/loss_l"] > 0
    assert metrics["val/loss"] == pytest.approx(metrics["val/loss_ab"] + 2.0 * metrics["val/loss_l"], rel=1e-5)
    assert metrics["val/psnr_joint"] != pytest.approx(metrics["val/psnr"])  # own L* vs ground-truth L*
    assert "-psnr" in metrics["best_ckpt"] and not metrics["uses_ground_truth_l"]

    guided = compose_cfg(_overrides("residual_joint_gt", "debug=tiny"))
    system = build_system(guided)
    assert system.uses_ground_truth_l and system.selection_metric == "val/psnr"
    best = [c for c in build_callbacks(guided, system) if isinstance(c, ModelCheckpoint) and c.monitor]
    assert [c.monitor for c in best] == ["val/psnr"] and "val/psnr_joint" not in best[0].filename
    blind = build_system(compose_cfg(_overrides("residual_joint", "debug=tiny")))
    assert not blind.uses_ground_truth_l and blind.selection_metric == "val/psnr_joint"


def test_the_one_bicubic_runs_under_bf16_autocast_as_the_gpu_recipe_does():
    """torch has no bf16 antialiased bicubic (seen on an H200 with model=srgan trainer=gpu:
    "compute_index_ranges_weights not implemented for 'BFloat16'"): it resizes in float32."""
    x = torch.rand(2, 3, 40, 40)
    out = resize_bicubic(x.bfloat16(), (30, 30))
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, resize_bicubic(x.bfloat16().float(), (30, 30)).bfloat16())
    net = ResidualJointNet(48, 128, blocks=1, width_mult=0.0625)  # x2.67: pixel shuffle to 192, the bicubic down to 128
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(torch.rand(2, 1, 48, 48) * 2 - 1)
    assert out["ab"].shape == (2, 2, 128, 128) and torch.isfinite(out["ab"].float()).all()


def test_model_table_any_scale_rows_match_docs_and_grow_with_the_output():
    from joint_colsr.model_table import ANY_SCALE_MODELS, any_scale_markdown, describe_any_scale

    name, overrides = ANY_SCALE_MODELS[0]
    row = describe_any_scale(name, overrides)
    flops = list(row["gflops"].values())
    assert flops == sorted(flops) and flops[0] < flops[-1]  # more output pixels, more FLOPs
    line = any_scale_markdown([row]).splitlines()[-1]
    assert line in (REPO / "docs" / "models.md").read_text(), f"docs/models.md is stale: python -m joint_colsr.model_table ({line})"
