"""The preprocess benchmark runs end to end (a smoke test: its timings are not checked)."""

import pytest

from joint_colsr.bench.preprocess import main

from .conftest import REPO


@pytest.mark.slow  # two builds in fresh interpreters: ~20 s
def test_preprocess_benchmark_measures_both_trees_and_the_index_open(tmp_path):
    result = main(["--photos", "6", "--workers", "1", "--shard-size", "4", "--size", "32", "--open-images", "3000", "--verify-mb", "4",
                   "--old-tree", str(REPO), "--work-dir", str(tmp_path)])
    for tree in ("new", "old"):
        assert result[tree]["photos"] == 6 and result[tree]["photos_per_s"] > 0
        assert 0 < result[tree]["pool_utilisation"] <= 1.5  # the pool's CPU seconds were counted
    assert result["index_open"]["images"] == 3000 + 5000 and result["index_open"]["open_quick_s"] > 0
    assert result["first_use_verify"]["megabytes"] == 4 and result["first_use_verify"]["sha256_mb_per_s"] > 0
