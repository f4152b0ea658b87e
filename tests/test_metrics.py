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
