import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio as sk_psnr

from joint_colsr.color import rgb_uint8_to_lab_batch
from joint_colsr.metrics import colorization_psnr, psnr_uint8


def test_psnr_matches_skimage_per_image():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, size=(3, 3, 32, 32), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-20, 21, size=a.shape), 0, 255).astype(np.uint8)
    ours = psnr_uint8(torch.from_numpy(a), torch.from_numpy(b))
    ref = [sk_psnr(b[i], a[i], data_range=255) for i in range(3)]
    assert ours.shape == (3,)
    assert np.allclose(ours.numpy(), ref, atol=1e-3)


def test_colorization_psnr_perfect_and_gray():
    rng = np.random.default_rng(1)
    rgb = torch.from_numpy(rng.integers(0, 256, size=(2, 3, 32, 32), dtype=np.uint8))
    batch = rgb_uint8_to_lab_batch(rgb, 16)
    perfect = colorization_psnr(batch["l_highres"], batch["ab_target"], rgb)
    gray = colorization_psnr(batch["l_highres"], torch.zeros_like(batch["ab_target"]), rgb)
    assert (perfect > 45).all()  # only 8-bit rounding error is left
    assert (gray < perfect - 10).all()


def test_psnr_shape_error():
    with pytest.raises(ValueError, match="must both be"):
        psnr_uint8(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 5))


# -- the evaluation metrics, each held against scikit-image or a plain numpy reference --------

from PIL import Image  # noqa: E402
from skimage.color import rgb2ycbcr  # noqa: E402
from skimage.metrics import structural_similarity as sk_ssim  # noqa: E402

from joint_colsr.color import denormalize_ab, upscale_l  # noqa: E402
from joint_colsr.metrics import (  # noqa: E402
    ab_error_auc,
    colorfulness,
    image_metrics,
    psnr_ab,
    psnr_y,
    ssim_uint8,
    summarize,
)
from tests.conftest import random_photo  # noqa: E402


def _noisy_pair(seed: int, n: int = 2, size: int = 48) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = np.stack([random_photo(rng, size, size) for _ in range(n)])
    b = np.clip(a.astype(int) + rng.integers(-25, 26, size=a.shape), 0, 255).astype(np.uint8)
    return a, b


def _chw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x).permute(0, 3, 1, 2)


def test_ssim_matches_skimage_gaussian():
    a, b = _noisy_pair(2)
    ours = ssim_uint8(_chw(b), _chw(a))
    ref = [sk_ssim(a[i], b[i], channel_axis=2, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)
           for i in range(len(a))]
    assert np.allclose(ours.numpy(), ref, atol=2e-5)
    assert torch.allclose(ssim_uint8(_chw(a), _chw(a)), torch.ones(len(a)))


def test_psnr_y_matches_skimage_ycbcr_with_border_crop():
    a, b = _noisy_pair(3)
    crop = 3
    ours = psnr_y(_chw(b), _chw(a), crop_border=crop)
    ref = []
    for i in range(len(a)):
        ya = rgb2ycbcr(a[i])[crop:-crop, crop:-crop, 0]
        yb = rgb2ycbcr(b[i])[crop:-crop, crop:-crop, 0]
        ref.append(sk_psnr(ya, yb, data_range=255))
    assert np.allclose(ours.numpy(), ref, atol=1e-3)
    # Cropping matters when the error sits at the border only.
    c = a.copy()
    c[:, :crop] = 255 - c[:, :crop]
    assert torch.isinf(psnr_y(_chw(c), _chw(a), crop_border=crop)).all()
    assert torch.isfinite(psnr_y(_chw(c), _chw(a), crop_border=0)).all()


def test_psnr_ab_matches_skimage_in_cie_units():
    rng = np.random.default_rng(4)
    ab_t = torch.from_numpy(rng.uniform(-0.6, 0.6, size=(2, 2, 16, 16)).astype(np.float32))
    ab_p = ab_t + torch.from_numpy(rng.normal(0, 0.05, size=ab_t.shape).astype(np.float32))
    ours = psnr_ab(ab_p, ab_t)
    ref = [sk_psnr(denormalize_ab(ab_t[i]).numpy(), denormalize_ab(ab_p[i]).numpy(), data_range=220.0) for i in range(2)]
    assert np.allclose(ours.numpy(), ref, atol=1e-3)


def _colorfulness_numpy(img: np.ndarray) -> float:
    """The implementation DDColor reports CF with (pyimagesearch's), on (H, W, 3) 0..255."""
    r, g, b = (img[..., i].astype(float) for i in range(3))
    rg, yb = np.absolute(r - g), np.absolute(0.5 * (r + g) - b)
    return float(np.sqrt(rg.std() ** 2 + yb.std() ** 2) + 0.3 * np.sqrt(rg.mean() ** 2 + yb.mean() ** 2))


def test_colorfulness_matches_reference_and_gray_is_zero():
    a, _ = _noisy_pair(5, n=3)
    ours = colorfulness(_chw(a).float())
    assert np.allclose(ours.numpy(), [_colorfulness_numpy(x) for x in a], rtol=1e-5)
    gray = np.repeat(a[..., :1], 3, axis=-1)
    assert torch.allclose(colorfulness(_chw(gray).float()), torch.zeros(3))


def _auc_numpy(ab_p: np.ndarray, ab_t: np.ndarray) -> float:
    err = np.linalg.norm((ab_p - ab_t) * 110.0, axis=0).ravel()
    curve = [(err <= t).mean() for t in range(151)]
    return float(np.trapezoid(curve) / 150.0)


def test_ab_error_auc_matches_numpy_and_bounds():
    rng = np.random.default_rng(6)
    ab_t = rng.uniform(-0.5, 0.5, size=(3, 2, 20, 20)).astype(np.float32)
    ab_p = (ab_t + rng.normal(0, 0.3, size=ab_t.shape)).astype(np.float32)
    ours = ab_error_auc(torch.from_numpy(ab_p), torch.from_numpy(ab_t))
    assert np.allclose(ours.numpy(), [_auc_numpy(ab_p[i], ab_t[i]) for i in range(3)], atol=1e-6)
    exact = ab_error_auc(torch.from_numpy(ab_t), torch.from_numpy(ab_t))
    assert torch.allclose(exact, torch.ones(3))  # every pixel within every threshold
    assert (ours < exact).all()


def test_upscale_l_is_pils_bicubic():
    rng = np.random.default_rng(7)
    low = rng.uniform(-0.9, 0.9, size=(12, 18)).astype(np.float32)
    ours = upscale_l(torch.from_numpy(low)[None, None], (32, 48))[0, 0].numpy()
    pil = np.asarray(Image.fromarray(low).resize((48, 32), Image.Resampling.BICUBIC))
    assert np.abs(ours - np.clip(pil, -1, 1)).max() < 1e-5


def test_image_metrics_protocols_differ_only_by_l():
    rng = np.random.default_rng(8)
    rgb = torch.from_numpy(np.stack([random_photo(rng, 64, 64) for _ in range(2)])).permute(0, 3, 1, 2).contiguous()
    batch = rgb_uint8_to_lab_batch(rgb, 24)
    ab = batch["ab_target"]
    l_up = upscale_l(batch["l_lowres"], (64, 64))
    with_gt_l = image_metrics(batch["l_highres"], batch["l_highres"], ab, ab, rgb, crop_border=3)
    with_up_l = image_metrics(batch["l_highres"], l_up, ab, ab, rgb, crop_border=3)
    # Protocol 1 ignores the model's own L*; protocol 2 and Y-PSNR pay for a blurred one.
    assert torch.equal(with_gt_l["psnr"], with_up_l["psnr"])
    assert (with_gt_l["psnr_joint"] > with_up_l["psnr_joint"] + 3).all()
    assert (with_up_l["psnr_y"] < 40).all() and (with_gt_l["psnr_y"] > with_up_l["psnr_y"]).all()
    assert torch.allclose(with_gt_l["auc_ab"], torch.ones(2))
    summary = summarize(with_up_l)
    assert summary["num_images"] == 2
    assert summary["colorfulness_gap"] == pytest.approx(abs(summary["colorfulness"] - summary["colorfulness_gt"]))
    with pytest.raises(ValueError, match="l_own"):
        image_metrics(batch["l_highres"], l_up[:, :, :32], ab, ab, rgb)


@pytest.mark.parametrize("net_name", ["cascade_colorize_first", "cascade_upscale_first", "residual_predicted", "residual_interpolated", "sr_only"])
def test_untrained_residual_nets_score_as_the_bicubic_baseline(net_name):
    """One bicubic for the whole suite: a net whose untrained output is its bicubic input
    delivers the bicubic baseline's L* and so its Y-PSNR (a "super-resolution gain" is
    never the kernel)."""
    from joint_colsr.nets import CascadeNet, ResidualJointNet, SROnlyNet
    from joint_colsr.nets.baselines import BicubicBaseline

    nets = {
        "cascade_colorize_first": lambda: CascadeNet(32, 80, "colorize_first", width_mult=0.0625, upscaler={"blocks": 1}),
        "cascade_upscale_first": lambda: CascadeNet(32, 80, "upscale_first", width_mult=0.0625, upscaler={"blocks": 1}),
        "residual_predicted": lambda: ResidualJointNet(32, 80, "predicted", blocks=1, width_mult=0.0625),
        "residual_interpolated": lambda: ResidualJointNet(32, 80, "interpolated", blocks=1, width_mult=0.0625),
        "sr_only": lambda: SROnlyNet(32, 80, blocks=1, width_mult=0.0625),
    }
    torch.manual_seed(0)
    net = nets[net_name]().eval()
    rng = np.random.default_rng(3)
    rgb = torch.from_numpy(np.stack([random_photo(rng, 80, 80) for _ in range(3)])).permute(0, 3, 1, 2).contiguous()
    batch = rgb_uint8_to_lab_batch(rgb, 32)
    with torch.no_grad():
        own_l = net(batch["l_lowres"])["l"]
        base_l = BicubicBaseline(32, 80)(batch["l_lowres"])["l"]
    args = (batch["ab_target"], batch["ab_target"], rgb, 3)
    y_net = image_metrics(batch["l_highres"], own_l, *args)["psnr_y"]
    y_base = image_metrics(batch["l_highres"], base_l, *args)["psnr_y"]
    assert y_base.mean() < 60  # the bicubic L* is not the ground truth: the comparison can fail
    assert (y_net - y_base).abs().max() < 0.02
