"""The fast paths are training options: speed.channels_last, speed.compile, trainer.precision=bf16-mixed.

Each one trains (fast_dev_run, tiny width) and gives the plain model's outputs within
tolerance. Their speed is measured by ``make bench``, never here.
"""

import copy

import lightning.pytorch as pl
import pytest
import torch

from joint_colsr.assembly import (
    build_callbacks,
    build_datamodule,
    build_loggers,
    build_system,
    build_trainer,
    start_run,
)
from joint_colsr.run.callbacks import ChannelsLast, images_to_channels_last
from joint_colsr.run.config_checks import ConfigError, check_config
from joint_colsr.nets import JointPaperNet
from joint_colsr.train import train

FDR = ["debug=fdr", "model.net.width_mult=0.0625", "data.batch_size=2"]


def test_speed_options_default_off_and_are_checked(compose_cfg):
    cfg = compose_cfg()
    assert cfg.speed.channels_last is False and cfg.speed.compile is False and cfg.speed.compile_mode is None
    with pytest.raises(ConfigError, match="speed.compile_mode"):
        check_config(compose_cfg(["speed.compile_mode=fastest"]))
    with pytest.raises(ConfigError, match="speed.channels_last"):
        check_config(compose_cfg(["speed.channels_last=yes"]))
    with pytest.raises(ConfigError, match="speed.float32_matmul_precision"):
        check_config(compose_cfg(["speed.float32_matmul_precision=fast"]))


def test_float32_matmul_precision_is_applied_at_start(compose_cfg):
    assert compose_cfg().speed.float32_matmul_precision is None  # torch's default stays
    before = torch.get_float32_matmul_precision()
    try:
        start_run(compose_cfg(["speed.float32_matmul_precision=high"]))
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(before)


class _RecordLayouts(pl.Callback):
    """Placed after ChannelsLast: sees the batch the training step will see."""

    def __init__(self):
        self.seen = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        conv = next(m for m in pl_module.net.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1)
        self.seen.append({
            "weight": conv.weight.is_contiguous(memory_format=torch.channels_last),
            "ab_target": batch["ab_target"].is_contiguous(memory_format=torch.channels_last),
            "ab_target_plain": batch["ab_target"].is_contiguous(),
            "rgb_target_untouched": batch["rgb_target"].is_contiguous(),
        })


def test_channels_last_trains_with_nhwc_weights_and_batches(compose_cfg):
    cfg = compose_cfg([*FDR, "speed.channels_last=true"])
    callbacks = build_callbacks(cfg)
    assert any(isinstance(c, ChannelsLast) for c in callbacks)
    recorder = _RecordLayouts()
    trainer = build_trainer(cfg, [*callbacks, recorder], build_loggers(cfg))
    trainer.fit(build_system(cfg), datamodule=build_datamodule(cfg))
    assert trainer.global_step == 1
    assert recorder.seen == [{"weight": True, "ab_target": True, "ab_target_plain": False, "rgb_target_untouched": True}]


def test_channels_last_is_not_added_by_default(compose_cfg):
    assert not any(isinstance(c, ChannelsLast) for c in build_callbacks(compose_cfg(FDR)))


def test_bf16_mixed_trains(compose_cfg):
    metrics = train(compose_cfg([*FDR, "trainer.precision=bf16-mixed"]))
    assert metrics["global_step"] == 1
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))


def test_channels_last_gives_the_same_outputs():
    torch.manual_seed(0)
    plain = JointPaperNet(width_mult=0.125).eval()
    for p in plain.head.parameters():  # the head starts at zero: make the output depend on everything
        torch.nn.init.normal_(p, std=0.1)
    nhwc = copy.deepcopy(plain).to(memory_format=torch.channels_last)
    x = torch.randn(2, 1, 96, 96)
    batch = images_to_channels_last({"l_lowres": x.clone(), "rgb": torch.zeros(2, 3, 4, 4, dtype=torch.uint8)})
    assert batch["l_lowres"].is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(nhwc(batch["l_lowres"]), plain(x), atol=1e-5, rtol=1e-4)


def test_compile_option_compiles_in_place_and_keeps_checkpoint_keys(compose_cfg):
    plain = build_system(compose_cfg(["debug=tiny"]))
    compiled = build_system(compose_cfg(["debug=tiny", "speed.compile=true"]))
    assert compiled.net._compiled_call_impl is not None and plain.net._compiled_call_impl is None
    assert list(compiled.state_dict()) == list(plain.state_dict())  # no "_orig_mod." prefixes
    # The device-side LAB conversion is compiled with it (and only with it).
    assert build_datamodule(compose_cfg(["debug=tiny", "speed.compile=true"])).compile_lab_conversion is True
    assert build_datamodule(compose_cfg(["debug=tiny"])).compile_lab_conversion is False


@pytest.mark.slow
def test_compiled_net_gives_the_same_outputs_and_gradients():
    """Runs inductor once on the tiniest net (about 20-60 s on a CPU: C++ code generation)."""
    torch.manual_seed(0)
    plain = JointPaperNet(width_mult=0.0625, input_size=32, output_size=64).eval()
    for p in plain.head.parameters():
        torch.nn.init.normal_(p, std=0.1)
    compiled = copy.deepcopy(plain)
    compiled.compile()
    x = torch.randn(2, 1, 32, 32)
    out_plain, out_compiled = plain(x), compiled(x)
    torch.testing.assert_close(out_compiled, out_plain, atol=1e-5, rtol=1e-4)
    out_plain.square().mean().backward()
    out_compiled.square().mean().backward()
    torch.testing.assert_close(compiled.head.weight.grad, plain.head.weight.grad, atol=1e-5, rtol=1e-4)


def test_compile_comes_after_the_startup_checks_with_static_shapes(compose_cfg):
    # The size check runs the plain net (at batch 1): had it run the compiled one, the
    # training batch would compile a second graph with a symbolic batch dimension.
    import torch._dynamo

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    system = build_system(compose_cfg(["debug=tiny", "speed.compile=true"]), startup_checks=True)
    assert system.net._compiled_call_impl is not None
    assert torch._dynamo.utils.counters["frames"]["total"] == 0  # nothing compiled yet
    with pytest.raises(ConfigError, match="output_size"):  # and the check did run
        build_system(compose_cfg(["debug=tiny", "speed.compile=true", "model.net.output_size=128"]), startup_checks=True)


def test_deterministic_probe_names_the_op_and_the_fix():
    # torch's own alert (what CUDA's bilinear backward raises) from a net on the gradient path.
    from joint_colsr.run.config_checks import probe_deterministic

    class AlertingNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 2, 1)

        def forward(self, x):
            torch._prims_common.alert_not_deterministic("upsample_bilinear2d_backward_out_cuda")
            return self.conv(x)

    batch = {"l_lowres": torch.zeros(2, 1, 4, 4), "l_highres": torch.zeros(2, 1, 8, 8)}
    with pytest.raises(ConfigError, match=r"upsample_bilinear2d_backward_out_cuda.*trainer.deterministic=warn"):
        probe_deterministic(AlertingNet(), batch, "cpu")
    assert not torch.are_deterministic_algorithms_enabled()  # restored
    probe_deterministic(torch.nn.Conv2d(1, 2, 1), batch, "cpu")  # a deterministic net passes


def test_deterministic_probe_covers_the_discriminator_and_its_pool_is_deterministic(compose_cfg):
    # srgan's training step also runs the discriminator backward: the probe names it and the fix.
    from joint_colsr.nets.discriminator import BinAveragePool
    from joint_colsr.run.config_checks import probe_training_modules

    system = build_system(compose_cfg(["model=srgan", "debug=tiny", "model.discriminator.width_mult=0.0625"]))
    seen = []
    system.discriminator.register_forward_hook(lambda module, args, out: seen.append(tuple(args[0].shape)))
    probe_training_modules(system, compose_cfg(["model=srgan", "debug=tiny"]), "cpu")
    assert seen == [(2, 3, 256, 256)]

    class AlertingPool(torch.nn.Module):  # what CUDA's adaptive pooling backward raises
        def forward(self, x):
            torch._prims_common.alert_not_deterministic("adaptive_avg_pool2d_backward_cuda")
            return x

    system.discriminator.classifier[0] = torch.nn.Sequential(AlertingPool(), system.discriminator.classifier[0])
    with pytest.raises(ConfigError, match=r"adaptive_avg_pool2d_backward_cuda \(in model.discriminator\).*multiple of 64"):
        probe_training_modules(system, compose_cfg(["model=srgan", "debug=tiny"]), "cpu")
    # The pool it uses: equal bins -> plain average pooling (deterministic backward), the same means.
    x = torch.randn(2, 3, 16, 12)
    assert torch.allclose(BinAveragePool(4)(x), torch.nn.functional.adaptive_avg_pool2d(x, 4), atol=1e-6)
    assert torch.allclose(BinAveragePool(4)(x[..., :10]), torch.nn.functional.adaptive_avg_pool2d(x[..., :10], 4), atol=1e-6)


def test_deterministic_turns_off_cudnn_autotuning(compose_cfg):
    from joint_colsr.assembly import build_trainer

    before = torch.backends.cudnn.benchmark
    try:
        build_trainer(compose_cfg(["trainer=gpu", "trainer.accelerator=cpu", "trainer.deterministic=true"]))
        assert torch.backends.cudnn.benchmark is False
        build_trainer(compose_cfg(["trainer=gpu", "trainer.accelerator=cpu"]))
        assert torch.backends.cudnn.benchmark is True
    finally:
        torch.backends.cudnn.benchmark = before
        torch.use_deterministic_algorithms(False)
