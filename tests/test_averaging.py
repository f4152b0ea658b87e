"""EMAModel: the same average as torch's EMA, no host read per update, correct after a reload."""

import pickle

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from joint_colsr.averaging import EMAModel
from joint_colsr.callbacks import EMA


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
