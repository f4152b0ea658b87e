"""Image grids name their columns and each row's metric."""

import numpy as np
import pytest
import torch

from joint_colsr.viz import VALIDATION_COLUMNS, colorization_rows, make_grid


def _dark_fraction(region: np.ndarray) -> float:
    return float((region.max(axis=-1) < 100).mean())


def test_titles_are_drawn_above_every_column():
    rows = [[torch.full((3, 64, 80), 255.0) for _ in range(3)] for _ in range(2)]
    plain = make_grid(rows)
    titled = make_grid(rows, column_titles=["a column", "another", "third"], title_height=18)
    assert titled.shape == (plain.shape[0] + 18, plain.shape[1], 3)
    for j in range(3):  # some dark text pixels in each column's title strip, none in the white images
        x0 = 2 + j * 82
        assert _dark_fraction(titled[:18, x0 : x0 + 80]) > 0.01
        assert _dark_fraction(titled[18:, x0 : x0 + 80]) == 0
    with pytest.raises(ValueError, match="2 column titles for 3 columns"):
        make_grid(rows, column_titles=["a", "b"])


def test_validation_rows_carry_the_psnr_of_prediction_and_gray():
    torch.manual_seed(0)
    l_high = torch.rand(2, 1, 32, 32) * 2 - 1
    rgb = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    rows = colorization_rows(l_high[..., ::2, ::2], l_high, torch.zeros(2, 2, 32, 32), rgb)
    assert len(rows) == 2 and all(len(r) == len(VALIDATION_COLUMNS) == 3 for r in rows)
    first = rows[0][0].permute(1, 2, 0).numpy()
    assert _dark_fraction(first[:16]) > 0.5  # the caption strip with the row's PSNR
