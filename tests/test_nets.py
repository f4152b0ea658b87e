import pytest
import torch
from torch import nn

from joint_colsr.nets import DECODER_TABLE, ENCODER_TABLE, JointPaperNet, count_parameters, decoder_upsample_sizes, encoded_size


def _convs(module: nn.Module) -> list[nn.Conv2d]:
    return [m for m in module.modules() if isinstance(m, nn.Conv2d)]


def test_encoder_matches_table_1():
    net = JointPaperNet()
    convs = _convs(net.encoder)
    expected = [(64, 3, 2, 1), (128, 3, 2, 1), (128, 3, 1, 1), (256, 3, 2, 1), (256, 3, 1, 1), (512, 3, 2, 1)]
    assert [(c.out_channels, c.kernel_size[0], c.stride[0], c.padding[0]) for c in convs] == expected
    assert [f for f, _ in ENCODER_TABLE] == [e[0] for e in expected]
    for block in net.encoder:
        kinds = [type(m) for m in block]
        assert kinds == [nn.Conv2d, nn.BatchNorm2d, nn.LeakyReLU]


def test_decoder_matches_table_2():
    net = JointPaperNet()
    convs = [block[0] for block in net.decoder] + [net.head]
    assert [(c.out_channels, c.kernel_size[0], c.stride[0], c.padding[0]) for c in convs] == [
        (f, 3, 1, 1) for f in (512, 256, 128, 64, 32, 16, 8, 2)
    ]
    assert tuple(c.out_channels for c in convs) == DECODER_TABLE
    for block in net.decoder:
        assert [type(m) for m in block] == [nn.Conv2d, nn.BatchNorm2d, nn.LeakyReLU]
    assert isinstance(net.head_activation, nn.Tanh)


def test_decoder_path_96_to_256():
    assert encoded_size(96) == 6
    assert decoder_upsample_sizes(6, 256) == [12, 24, 48, 96, 192, 256, 256]
    # Every upsampling is nearest and enlarges by at most 2x.
    sizes = [6, *decoder_upsample_sizes(6, 256)]
    assert all(b <= 2 * a for a, b in zip(sizes, sizes[1:]))


def test_paper_net_flops_and_shape():
    from torch.utils.flop_counter import FlopCounterMode

    net = JointPaperNet().eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        out = net(torch.randn(1, 1, 96, 96))
    assert out.shape == (1, 2, 256, 256)
    assert counter.get_total_flops() / 1e9 == pytest.approx(2.636, abs=0.01)


@pytest.mark.parametrize("in_size,out_size", [(96, 256), (64, 128), (48, 192)])
def test_output_shapes(in_size, out_size):
    net = JointPaperNet(input_size=in_size, output_size=out_size, width_mult=1 / 16)
    out = net(torch.randn(2, 1, in_size, in_size))
    assert out.shape == (2, 2, out_size, out_size)
    assert out.abs().max() <= 1.0


def test_fully_convolutional_keeps_scale():
    net = JointPaperNet(96, 256, width_mult=1 / 16).eval()
    out = net(torch.randn(1, 1, 48, 72))
    assert out.shape == (1, 2, 128, 192)


def test_untrained_net_predicts_gray():
    net = JointPaperNet(width_mult=1 / 16)
    assert torch.count_nonzero(net(torch.randn(2, 1, 96, 96))) == 0


def test_gradients_reach_every_parameter():
    net = JointPaperNet(width_mult=1 / 16)
    # With a zero head, only the head gets gradient on the first step; after one update all do.
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x, target = torch.randn(2, 1, 96, 96), torch.rand(2, 2, 256, 256) - 0.5
    for _ in range(2):
        opt.zero_grad()
        nn.functional.mse_loss(net(x), target).backward()
        opt.step()
    missing = [n for n, p in net.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing


def test_width_mult_and_params():
    full = count_parameters(JointPaperNet())
    tiny = count_parameters(JointPaperNet(width_mult=1 / 16))
    assert 6_000_000 < full < 6_500_000
    assert tiny < full / 100


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"input_size": 8}, "input_size"),
        ({"input_size": 96, "output_size": 64}, "output_size"),
        ({"output_activation": "relu"}, "output_activation"),
        ({"upsample_mode": "cubic"}, "upsample_mode"),
        ({"width_mult": 0}, "width_mult"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        JointPaperNet(**kwargs)


def test_bad_input_rank():
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        JointPaperNet(width_mult=1 / 16)(torch.randn(1, 96, 96))
