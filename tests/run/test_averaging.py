"""EMAModel: the same average as torch's EMA, no host read per update, correct after a reload."""

import pickle

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from joint_colsr.run.averaging import EMAModel
from joint_colsr.run.callbacks import EMA


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 2, 3))


def _train_step(net: nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    net.train()(torch.randn(2, 3, 8, 8, generator=gen))  # moves BatchNorm statistics
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=gen))


def test_same_average_as_torchs_ema():
    torch.manual_seed(0)
    net = _net()
    ours = EMAModel(net, decay=0.9)
    ref = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    for step in range(5):
        _train_step(net, step)
        ours.update_parameters(net)
        ref.update_parameters(net)
    ours_state, ref_state = ours.state_dict(), ref.state_dict()
    assert ours_state.keys() == ref_state.keys()  # checkpoints stay interchangeable
    for key, value in ours_state.items():
        if value.is_floating_point():
            assert torch.equal(value, ref_state[key]), key
    assert int(ours.n_averaged) == 5
    # Integer buffers are copied, not averaged: the step count is the model's.
    assert int(ours.module[1].num_batches_tracked) == int(net[1].num_batches_tracked) == 5
    # The first update copies (the average starts at the weights after step 1), later ones blend.
    assert not torch.equal(ours.module[0].weight, net[0].weight)


def test_update_never_reads_the_device_back():
    # On the meta device every host read (bool, item, int) raises: the per-step update must
    # not make one. torch's AveragedModel does (bool(n_averaged == 0)), which is the control.
    net = _net().to("meta")
    ours = EMAModel(net, decay=0.99, device="meta")
    for _ in range(3):
        ours.update_parameters(net)
    ref = AveragedModel(net, device="meta", multi_avg_fn=get_ema_multi_avg_fn(0.99))
    with pytest.raises(RuntimeError, match="meta"):
        ref.update_parameters(net)


def test_reload_restores_the_count_and_the_first_update_rule():
    torch.manual_seed(0)
    net = _net()
    trained = EMAModel(net, decay=0.5)
    _train_step(net, 0)
    trained.update_parameters(net)
    _train_step(net, 1)

    resumed = EMAModel(_net(), decay=0.5)
    resumed.load_state_dict(trained.state_dict())
    resumed.update_parameters(net)  # n_averaged == 1 in the state: blend, not copy
    trained.update_parameters(net)
    for a, b in zip(resumed.parameters(), trained.parameters()):
        assert torch.equal(a, b)
    assert int(resumed.n_averaged) == 2

    fresh = EMAModel(_net(), decay=0.5)
    fresh.load_state_dict(EMAModel(_net(), decay=0.5).state_dict())  # n_averaged == 0
    fresh.update_parameters(net)
    assert torch.equal(fresh.module[0].weight, net[0].weight)  # first update copies


def test_without_buffers_the_statistics_follow_the_model():
    net = _net()
    ema = EMAModel(net, decay=0.9, use_buffers=False)
    for step in range(2):
        _train_step(net, step)
        ema.update_parameters(net)
    assert torch.equal(ema.module[1].running_mean, net[1].running_mean)
    assert not torch.equal(ema.module[0].weight, net[0].weight)


@pytest.mark.parametrize("decay", [-0.1, 1.5])
def test_decay_outside_zero_one_is_refused(decay):
    with pytest.raises(ValueError, match="decay"):
        EMAModel(_net(), decay=decay)
    with pytest.raises(ValueError, match="callbacks.ema.decay"):
        EMA(decay=decay)


def test_callback_pickles_for_ddp_spawn():
    callback = pickle.loads(pickle.dumps(EMA(decay=0.9)))
    assert callback.decay == 0.9


def test_callback_average_follows_the_module_to_its_device():
    # Lightning calls setup() before the strategy places the module and on_fit_start() after
    # (trainer._run): the average is built in the first and must follow the module in the
    # second. The meta device stands in for a GPU: a CPU average would fail the check.
    module = _TinyConvModule()
    callback = EMA(decay=0.9)
    callback.setup(None, module, "fit")
    assert next(callback._average_model.parameters()).device.type == "cpu"
    module.to("meta")  # what the strategy's setup does with the accelerator's device
    callback.on_fit_start(None, module)
    for avg, cur in zip(callback._average_model.module.state_dict().values(), module.state_dict().values()):
        assert avg.device == cur.device
    assert callback._average_model.n_averaged.device.type == "meta"
    callback._average_model.update_parameters(module)  # no host read, no copy across devices


def test_an_explicit_device_is_kept():
    module = _TinyConvModule()
    callback = EMA(decay=0.9, device="cpu")
    callback.setup(None, module, "fit")
    module.to("meta")
    callback.on_fit_start(None, module)
    assert next(callback._average_model.parameters()).device.type == "cpu"


class _TinyConvModule(__import__("lightning").pytorch.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = _net()

    def training_step(self, batch, batch_idx):
        return self.net(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_in_a_real_fit_the_average_matches_the_module_device_and_layout(tmp_path):
    # With speed.channels_last the ChannelsLast callback converts the module after the EMA
    # copy was made; the average must take the same layout (and device) before the first update.
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, TensorDataset

    from joint_colsr.run.callbacks import ChannelsLast

    seen = []

    class Check(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            for avg, cur in zip(ema._average_model.module.state_dict().values(), pl_module.state_dict().values()):
                seen.append((avg.device == cur.device, avg.stride() == cur.stride()))

    ema = EMA(decay=0.9)
    data = DataLoader(TensorDataset(torch.randn(8, 3, 8, 8)), batch_size=4)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, callbacks=[ema, ChannelsLast(), Check()], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path)
    trainer.fit(_TinyConvModule(), data)
    assert seen and all(device and layout for device, layout in seen)
    assert ema._average_model.module.net[0].weight.is_contiguous(memory_format=torch.channels_last)


def test_gan_generator_average_moves_with_the_system(compose_cfg):
    # The GAN keeps its generator EMA as a submodule (not a callback): wherever the strategy
    # places the system, the average goes too, and in the same memory layout.
    from joint_colsr.assembly import build_system

    system = build_system(compose_cfg(["model=srgan", "debug=tiny", "model.ema_decay=0.9", "model.net.blocks=1",
                                       "model.discriminator.width_mult=0.0625", "speed.channels_last=true"]))
    system.to("meta")
    for (name, avg), cur in zip(system.net_ema.module.named_parameters(), system.net.parameters()):
        assert avg.device == cur.device and avg.stride() == cur.stride(), name
    assert system.net_ema.n_averaged.device.type == "meta"
    system.net_ema.update_parameters(system.net)
