import numpy as np
import pytest
import torch
from skimage.color import lab2rgb, rgb2lab

from joint_colsr.color import (
    AB_SCALE,
    RgbToLabBatch,
    denormalize_ab,
    denormalize_l,
    lab_to_rgb,
    merge_l_ab_to_rgb,
    normalize_ab,
    normalize_l,
    quantize_uint8,
    rgb_to_lab,
    rgb_uint8_to_lab_batch,
)
from joint_colsr.data.sources import SAMPLE_PHOTOS


def _kornia_vs_skimage(rgb_uint8: np.ndarray) -> np.ndarray:
    ours = rgb_to_lab(torch.from_numpy(rgb_uint8).permute(2, 0, 1)[None].float() / 255.0)[0].permute(1, 2, 0).numpy()
    ref = rgb2lab(rgb_uint8)  # D65, 2-degree observer, like kornia
    return np.abs(ours - ref).max(axis=(0, 1))


def test_rgb_to_lab_matches_skimage_random():
    rgb = np.random.default_rng(0).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    assert (_kornia_vs_skimage(rgb) < 0.01).all()


@pytest.mark.parametrize("name", ["astronaut", "coffee", "china"])
def test_rgb_to_lab_matches_skimage_real(name):
    rgb = SAMPLE_PHOTOS[name][1]()[:128, :128, :3]
    assert (_kornia_vs_skimage(np.ascontiguousarray(rgb)) < 0.01).all()


def test_lab_to_rgb_matches_skimage():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    lab = rgb2lab(rgb)
    ours = lab_to_rgb(torch.from_numpy(lab).permute(2, 0, 1)[None].float())[0].permute(1, 2, 0).numpy()
    assert np.abs(ours - lab2rgb(lab)).max() < 1e-3


def test_normalization_round_trip():
    l_star = torch.linspace(0, 100, 101).reshape(1, 1, 1, 101)
    ab = torch.linspace(-128, 127, 256).reshape(1, 1, 1, 256)
    assert torch.allclose(denormalize_l(normalize_l(l_star)), l_star, atol=1e-5)
    assert torch.allclose(denormalize_ab(normalize_ab(ab)), ab, atol=1e-5)
    assert normalize_l(torch.tensor(0.0)) == -1 and normalize_l(torch.tensor(100.0)) == 1
    assert normalize_ab(torch.tensor(AB_SCALE)) == 1


def test_sRGB_gamut_fits_tanh_range():
    # Every 8-bit colour lands inside (-1, 1) after normalization.
    levels = torch.linspace(0, 1, 18)
    r, g, b = torch.meshgrid(levels, levels, levels, indexing="ij")
    rgb = torch.stack([r, g, b]).reshape(1, 3, -1, 1)
    ab = normalize_ab(rgb_to_lab(rgb)[:, 1:])
    assert ab.abs().max() < 1.0


def test_batch_round_trip_reproduces_image():
    rgb = torch.from_numpy(np.ascontiguousarray(SAMPLE_PHOTOS["coffee"][1]()[:256, :256])).permute(2, 0, 1)[None]
    batch = rgb_uint8_to_lab_batch(rgb, input_size=96)
    assert batch["l_lowres"].shape == (1, 1, 96, 96)
    assert batch["l_highres"].shape == (1, 1, 256, 256) and batch["ab_target"].shape == (1, 2, 256, 256)
    assert batch["l_lowres"].dtype == torch.float32
    assert batch["l_lowres"].min() >= -1 and batch["l_lowres"].max() <= 1
    back = quantize_uint8(merge_l_ab_to_rgb(batch["l_highres"], batch["ab_target"]))
    assert (back - rgb.float()).abs().max() <= 1.0  # 8-bit round trip through LAB


def test_module_form_matches_function():
    rgb = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    a = RgbToLabBatch(32)(rgb)
    b = rgb_uint8_to_lab_batch(rgb, 32)
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_conversion_ignores_autocast():
    rgb = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        batch = rgb_uint8_to_lab_batch(rgb, 16)
    assert batch["ab_target"].dtype == torch.float32
    assert torch.allclose(batch["ab_target"], rgb_uint8_to_lab_batch(rgb, 16)["ab_target"])


def test_compiled_conversion_gives_the_same_batch():
    """speed.compile=true runs the conversion through torch.compile (a few seconds of inductor on a CPU)."""
    rgb = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    for interpolation in ("bicubic", "area"):
        eager = rgb_uint8_to_lab_batch(rgb, 24, interpolation)
        compiled = rgb_uint8_to_lab_batch(rgb, 24, interpolation, compiled=True)
        for key in ("l_lowres", "l_highres", "ab_target"):
            torch.testing.assert_close(compiled[key], eager[key], atol=1e-5, rtol=1e-5)
        assert compiled["rgb_target"] is rgb


def test_gradcheck_merge():
    l = (torch.rand(1, 1, 4, 4, dtype=torch.float64) * 1.6 - 0.8).requires_grad_()
    ab = (torch.rand(1, 2, 4, 4, dtype=torch.float64) * 0.2 - 0.1).requires_grad_()
    from kornia.color import lab_to_rgb as k_lab_to_rgb

    def fn(l_norm, ab_norm):
        return k_lab_to_rgb(torch.cat([denormalize_l(l_norm), denormalize_ab(ab_norm)], 1), clip=False)

    assert torch.autograd.gradcheck(fn, (l, ab), eps=1e-6, atol=1e-4)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: rgb_to_lab(torch.rand(3, 8, 8)), r"\(B, 3, H, W\)"),
        (lambda: rgb_to_lab(torch.randint(0, 255, (1, 3, 8, 8), dtype=torch.uint8)), "float"),
        (lambda: rgb_uint8_to_lab_batch(torch.rand(1, 3, 8, 8), 4), "uint8"),
        (lambda: rgb_uint8_to_lab_batch(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), 16), "input_size"),
        (lambda: rgb_uint8_to_lab_batch(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), 4, "lanczos"), "lowres_interpolation"),
        (lambda: merge_l_ab_to_rgb(torch.zeros(1, 1, 8, 8), torch.zeros(1, 2, 4, 4)), "agree"),
    ],
)
def test_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("channels_last", [False, True])
def test_lab_conversions_are_kornias_with_the_constants_kept(channels_last):
    # Same maths as kornia's rgb_to_lab / lab_to_rgb (the white point folded into the
    # matrices), constants made once per device: no tensor is built from Python data again.
    import kornia.color

    from joint_colsr.color import lab_to_rgb, rgb_to_lab
    from joint_colsr.run.syncs import HostReadRecorder

    rgb = torch.rand(2, 3, 17, 9, generator=torch.Generator().manual_seed(0))
    rgb[0, :, 0, 0] = 0.0  # black and white hit both branches of f(t)
    rgb[0, :, 0, 1] = 1.0
    if channels_last:
        rgb = rgb.contiguous(memory_format=torch.channels_last)
    lab = rgb_to_lab(rgb)
    torch.testing.assert_close(lab, kornia.color.rgb_to_lab(rgb), atol=2e-4, rtol=1e-5)
    lab[:, 1:] *= 1.3  # out of gamut too: clipping and Z < 0
    torch.testing.assert_close(lab_to_rgb(lab), kornia.color.lab_to_rgb(lab, clip=True), atol=2e-6, rtol=1e-5)
    with HostReadRecorder() as recorder:
        lab_to_rgb(rgb_to_lab(rgb))
    assert recorder.reads == []
