"""Any magnification from one model: the implicit upsampler, scale-aware training, per-scale
evaluation, prediction at any size, compare at a chosen scale, and a check that a tiny
any-scale model really generalises across scales (docs/architecture.md, "Continuous magnification")."""

from __future__ import annotations

import json
from fractions import Fraction

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from joint_colsr.assembly import build_datamodule, build_system
from joint_colsr.color import upscale_l
from joint_colsr.data.scales import check_scale_range, scale_label, scale_uniform, target_side
from joint_colsr.nets import JointPaperNet, ResidualJointNet
from joint_colsr.nets.implicit import ImplicitUpsampler, axis_queries
from joint_colsr.predict import TiledColorizer
from joint_colsr.run.config_checks import ConfigError, check_model_output

from ._cli import output_tail, run_command
from .conftest import assert_resume_from_step_is_exact

#: A small any-scale task: 32-pixel inputs, targets 48..64 pixels (x1.5 to x2).
ANY_SCALE = ["model=residual_joint", "model.net.upsampler=implicit", "model.net.width=16", "model.net.blocks=1",
             "model.net.implicit_hidden=16", "data.input_size=32", "data.output_size=64", "data.scale_range=[1.5,2]",
             "data.val_scales=[1.5,2]"]


# -- the network --------------------------------------------------------------------------------


def test_axis_queries_blend_two_cells_with_weights_summing_to_one():
    for n_out, n_in in [(7, 3), (64, 32), (5, 5), (3, 7)]:
        (low_i, low_off, low_w), (high_i, high_off, high_w) = axis_queries(n_out, n_in)
        assert torch.allclose(low_w + high_w, torch.ones(n_out))
        assert (low_i >= 0).all() and (high_i < n_in).all() and (high_i - low_i <= 1).all()
        centre = (torch.arange(n_out) + 0.5) * n_in / n_out - 0.5
        assert torch.allclose(low_i + low_off, centre) and torch.allclose(high_i + high_off, centre)
    # Same size: every output pixel sits on its own cell (weight 1, offset 0).
    (index, offset, weight), _ = axis_queries(6, 6)
    assert torch.equal(index, torch.arange(6)) and offset.abs().max() == 0 and torch.equal(weight, torch.ones(6))


@pytest.mark.parametrize("make", [
    lambda: JointPaperNet(32, 64, width_mult=0.0625, upsampler="implicit"),
    lambda: ResidualJointNet(32, 64, width=8, blocks=1, upsampler="implicit"),
])
def test_implicit_nets_deliver_any_requested_size_and_start_gray(make):
    torch.manual_seed(0)
    net = make().eval()
    x = torch.rand(2, 1, 32, 40) * 2 - 1
    for out_hw in [(64, 80), (48, 60), (128, 160), (50, 121), (33, 41)]:  # x2, x1.5, x4, anisotropic, barely larger
        out = net(x, out_hw=out_hw)
        ab = out["ab"] if isinstance(out, dict) else out
        assert tuple(ab.shape) == (2, 2, *out_hw)
        assert ab.abs().max() == 0  # the last layer starts at zero: gray
        if isinstance(out, dict):  # its own L* starts as the bicubic input
            assert torch.allclose(out["l"], upscale_l(x, out_hw))
    assert tuple((net(x)["ab"] if isinstance(net(x), dict) else net(x)).shape[-2:]) == (64, 80)  # default: its built scale


def test_fixed_scale_nets_refuse_another_size_and_name_the_option():
    net = JointPaperNet(32, 64, width_mult=0.0625)
    with pytest.raises(ValueError, match="upsampler=implicit"):
        net(torch.zeros(1, 1, 32, 32), out_hw=(48, 48))
    with pytest.raises(ValueError, match="upsampler must be one of"):
        JointPaperNet(32, 64, upsampler="liif")


def test_implicit_output_is_continuous_across_cell_borders():
    # A random upsampler on a smooth feature map: neighbouring output pixels differ by about
    # as much inside a latent cell as across a cell border (no blocky steps at the borders).
    torch.manual_seed(0)
    up = ImplicitUpsampler(4, 2, hidden=16)
    nn.init.normal_(up.out.weight, std=0.5)
    ramp = torch.linspace(-1, 1, 8)
    feat = torch.stack([ramp[None, :].expand(8, 8), ramp[:, None].expand(8, 8), ramp[None, :].expand(8, 8) ** 2,
                        torch.zeros(8, 8)])[None]
    with torch.no_grad():
        out = up(feat, (8, 64))[0, 0, 4]  # one row at x8 horizontally
    steps = out.diff().abs()
    at_border = steps[7::8][:-1]  # between output pixels 8k+7 and 8k+8: a latent cell border
    assert at_border.max() < 4 * steps.median() + 1e-6


# -- data ---------------------------------------------------------------------------------------


def test_scale_range_is_checked_at_start_up_naming_the_key():
    with pytest.raises(ValueError, match="data.scale_range: every scale must be > 1"):
        check_scale_range([0.5, 2], 32, 64)
    with pytest.raises(ValueError, match="data.scale_range must be \\[min, max\\] with min <= max"):
        check_scale_range([2, 1.5], 32, 64)
    with pytest.raises(ValueError, match="set data.output_size>=128"):
        check_scale_range([1.5, 4], 32, 64)
    assert check_scale_range([1.5, 2], 32, 64) == (1.5, 2.0)
    assert scale_label(2.0) == "2" and scale_label(2.67) == "2.67" and target_side(96, 2.67) == 256


def test_a_fixed_scale_model_with_a_scale_range_fails_at_start_up(compose_cfg):
    cfg = compose_cfg(["data.input_size=32", "data.output_size=64", "data.scale_range=[1.5,2]"])
    with pytest.raises(ConfigError, match="model.net.upsampler=implicit"):
        check_model_output(build_system(cfg), cfg)
    with pytest.raises(Exception, match="data.val_scales needs data.scale_range"):
        build_datamodule(compose_cfg(["data.val_scales=[2]"]))


def _training_sizes(cfg, batches: int) -> list[int]:
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    sizes = []
    for i, batch in enumerate(datamodule.train_dataloader()):
        if i == batches:
            break
        lab = datamodule.on_after_batch_transfer(batch, 0)
        assert lab["l_lowres"].shape[-1] == 32
        sizes.append(int(lab["ab_target"].shape[-1]))
        assert lab["rgb_target"].shape[-1] == lab["l_highres"].shape[-1] == sizes[-1]
    return sizes


def test_each_batch_draws_one_scale_from_its_first_sample_key(compose_cfg):
    cfg = compose_cfg([*ANY_SCALE, "data.batch_size=2", "data.num_workers=0", "data.train_samples_per_epoch=16"])
    sizes = _training_sizes(cfg, 8)
    assert len(set(sizes)) > 2 and all(48 <= s <= 64 for s in sizes)  # several scales, all in [x1.5, x2]
    assert _training_sizes(cfg, 8) == sizes  # the same epoch draws the same scales
    assert 0 <= scale_uniform(12345) < 1 and scale_uniform(12345) == scale_uniform(12345) != scale_uniform(12346)


def test_any_scale_batches_from_a_cache_and_a_cache_too_small_for_the_range(tmp_path):
    from joint_colsr.data import ColSRDataModule, SamplePhotos
    from joint_colsr.data.cache import CacheError, build_cache

    root = tmp_path / "cache"
    build_cache(SamplePhotos(), root, output_size=32, train_size=48, shard_size=4, progress=False)
    settings = {"batch_size": 2, "num_workers": 0, "input_size": 16, "train_samples_per_epoch": 12, "seed": 3}

    def sizes() -> list[int]:
        dm = ColSRDataModule(None, cache=str(root), output_size=32, scale_range=[1.5, 2], **settings)
        dm.setup("fit")
        return [int(dm.on_after_batch_transfer(b, 0)["ab_target"].shape[-1]) for b in dm.train_dataloader()]

    first = sizes()
    assert first == sizes() and len(set(first)) > 1 and all(24 <= s <= 32 for s in first)
    with pytest.raises(ValueError, match="set data.output_size>=48"):  # x3 of 16 needs 48-pixel references
        ColSRDataModule(None, cache=str(root), output_size=32, scale_range=[1.5, 3], **settings)
    with pytest.raises(CacheError, match="data.output_size=48"):  # the cache holds 32-pixel references
        ColSRDataModule(None, cache=str(root), output_size=48, scale_range=[1.5, 3], **settings).setup("fit")


def test_validation_scores_every_scale_of_val_scales(compose_cfg):
    datamodule = build_datamodule(compose_cfg([*ANY_SCALE, "data.num_workers=0"]))
    datamodule.setup("validate")
    batch = datamodule.on_after_batch_transfer(next(iter(datamodule.val_dataloader())), 0)
    assert list(batch["by_scale"]) == ["1.5", "2"]
    assert [b["ab_target"].shape[-1] for b in batch["by_scale"].values()] == [48, 64]


def test_mid_epoch_resume_of_any_scale_training_is_exact(compose_cfg, tmp_path):
    from .run.test_reliability import EVERY_STEP_CHECKPOINTS, EXACT

    run = assert_resume_from_step_is_exact(compose_cfg, tmp_path, [*EXACT, *ANY_SCALE, "trainer.max_epochs=1", *EVERY_STEP_CHECKPOINTS],
                                           step=2, steps=4)
    metrics = (run / "metrics.json").read_text()
    assert "val_scale/psnr_joint_x1.5" in metrics and "val_scale/psnr_joint_x2" in metrics


# -- prediction -----------------------------------------------------------------------------------


@pytest.mark.parametrize("scales", [(Fraction(16, 5),) * 2, (Fraction(5, 2), Fraction(3))])
def test_tiled_any_scale_prediction_matches_the_whole_image(scales):
    torch.manual_seed(0)
    net = ResidualJointNet(32, 64, width=16, blocks=2, implicit_hidden=16, upsampler="implicit").eval()
    nn.init.normal_(net.implicit.out.weight, std=0.3)  # colours and L* detail, not the gray start
    l_star = torch.from_numpy(np.random.default_rng(0).uniform(0, 100, size=(90, 70)).astype(np.float32))
    whole = TiledColorizer(net, scales, tile_size=512, tile_overlap=0)(l_star)
    tiled = TiledColorizer(net, scales, tile_size=32, tile_overlap=16)(l_star)
    assert whole.shape == tiled.shape == (round(90 * scales[0]), round(70 * scales[1]), 3)
    diff = np.abs(whole.astype(int) - tiled.astype(int))
    # Tiles see less context at their edges; the blending hides it: measured max 3, mean 0.06-0.08.
    assert diff.max() <= 6 and diff.mean() < 0.25


# -- the end-to-end check: one tiny model, every scale ------------------------------------------------


@pytest.fixture(scope="module")
def any_scale_run(tmp_path_factory):
    """A tiny residual_joint with the implicit upsampler trained 300 steps over x1.5..x4 on the
    embedded photos (32-pixel inputs), then scored on the held-out validation photos."""
    root = tmp_path_factory.mktemp("any_scale")
    proc = run_command(
        "train", "experiment=any_scale", "model=residual_joint", "model.net.width=32", "model.net.blocks=2",
        "model.net.implicit_hidden=32", "data.input_size=32", "data.output_size=128", "data.val_scales=[1.5,2,3,4]",
        "data.batch_size=8", "data.num_workers=0", "data.val_views=1", "trainer.accelerator=cpu", "trainer.max_steps=300",
        "trainer.max_epochs=1000", "model.optimizer.lr=1e-3", "callbacks=default", "logger=csv", "seed=0",
        f"hydra.run.dir={root / 'run'}", cwd=root, timeout=900)
    assert proc.returncode == 0, output_tail(proc)
    return root


def test_a_tiny_any_scale_model_beats_bicubic_at_every_scale_on_held_out_photos(any_scale_run):
    root = any_scale_run
    ckpt = root / "run" / "checkpoints" / "last.ckpt"
    proc = run_command("eval", f"ckpt_path={ckpt}", "scales=[1.5,2,2.5,3,4,6]", f"hydra.run.dir={root / 'eval'}", cwd=root)
    assert proc.returncode == 0, output_tail(proc)
    metrics = json.loads((root / "eval" / "metrics.json").read_text())
    assert metrics["scales"] == ["1.5", "2", "2.5", "3", "4", "6"] and metrics["num_images"] == 2
    for label, entry in metrics["by_scale"].items():
        gain = entry["psnr_y"] - entry["bicubic_psnr_y"]
        if label == "6":  # beyond the training range: marked, not required to win
            assert entry["extrapolation"] is True
            continue
        assert entry["extrapolation"] is False
        # Measured at 300 steps: +1.2 dB at x1.5 down to +0.45 dB at x4 (Y-PSNR over bicubic).
        assert gain > 0.2, f"x{label}: Y-PSNR {entry['psnr_y']:.2f} vs bicubic {entry['bicubic_psnr_y']:.2f}"
    assert metrics["by_scale"]["2.5"]["y_crop_border"] == 3 and metrics["by_scale"]["4"]["y_crop_border"] == 4
    assert (root / "eval" / "by_scale.png").is_file()
    rows = (root / "eval" / "per_image.csv").read_text().splitlines()
    assert rows[0].startswith("index,scale,") and len(rows) == 1 + 2 * 6


def test_the_any_scale_model_predicts_exactly_the_requested_sizes(any_scale_run, tmp_path):
    ckpt = any_scale_run / "run" / "checkpoints" / "last.ckpt"
    photos = tmp_path / "in"
    photos.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, size=(41, 57, 3), dtype=np.uint8)).save(photos / "a.png")
    for n, (arg, expected) in enumerate([("scale=2", (114, 82)), ("scale=4", (228, 164)), ("output_size=[200,100]", (200, 100))]):
        out = tmp_path / f"out{n}"
        proc = run_command("predict", f"ckpt_path={ckpt}", f"input_dir={photos}", f"output_dir={out}", arg, cwd=tmp_path)
        assert proc.returncode == 0, output_tail(proc)
        assert Image.open(out / "a.png").size == expected
    for arg, message in [("scale=1", "scale must be > 1"), ("output_size=[40,100]", "smaller than the input"),
                         ("scale=500", "over max_output_side=16384")]:
        proc = run_command("predict", f"ckpt_path={ckpt}", f"input_dir={photos}", f"output_dir={tmp_path / 'bad'}", arg, cwd=tmp_path)
        assert proc.returncode != 0 and message in proc.stderr, output_tail(proc)
    assert not (tmp_path / "bad").exists()


# -- evaluation and compare of fixed-scale models and baselines ------------------------------------


def test_eval_scores_baselines_per_scale_and_refuses_a_fixed_model_elsewhere(tiny_ckpt, tmp_path):
    proc = run_command("eval", "baseline=bicubic", "scales=[1.5,2.67,4]", f"hydra.run.dir={tmp_path / 'bicubic'}", cwd=tmp_path)
    assert proc.returncode == 0, output_tail(proc)
    metrics = json.loads((tmp_path / "bicubic" / "metrics.json").read_text())
    assert list(metrics["by_scale"]) == ["1.5", "2.67", "4"]
    for entry in metrics["by_scale"].values():
        # The baseline is the bicubic reference: its own Y-PSNR is the reference column.
        assert entry["psnr_y"] == pytest.approx(entry["bicubic_psnr_y"], abs=1e-6) and entry["extrapolation"] is False
    assert "## By scale" in (tmp_path / "bicubic" / "metrics.md").read_text()
    proc = run_command("eval", f"ckpt_path={tiny_ckpt}", "scales=[2,4]", f"hydra.run.dir={tmp_path / 'fixed'}", cwd=tmp_path)
    assert proc.returncode != 0 and "is fixed-scale" in proc.stderr and "model.net.upsampler=implicit" in proc.stderr
    (tmp_path / "in").mkdir()
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "in" / "a.png")
    proc = run_command("predict", f"ckpt_path={tiny_ckpt}", f"input_dir={tmp_path / 'in'}", f"output_dir={tmp_path / 'p'}",
                       "scale=2", cwd=tmp_path)
    assert proc.returncode != 0 and "fixed-scale" in proc.stderr and "upsampler=implicit" in proc.stderr


def test_compare_at_a_scale_trains_fixed_contenders_for_it_and_counts_any_scale_compute():
    from joint_colsr.compare import ANY_SCALE_RANGE, any_scale_overrides, apply_scale, net_costs, parse_args

    args = parse_args(["--scale", "2", "--train", "debug=tiny", "data.input_size=32"])
    args.models = ["joint_paper", "joint_paper_any_scale"]
    apply_scale(args)
    assert args.train[-1] == "data.output_size=64" and args.eval[-1] == "scales=[2]"
    extra = any_scale_overrides("joint_paper_any_scale", args.train)
    assert extra == ["data.scale_range=[1.5,4]", "data.output_size=128", "data.val_scales=[2]"]
    assert any_scale_overrides("joint_paper", args.train) == []
    base = ["model=joint_paper", "model.net.upsampler=implicit", *args.train]
    costs = net_costs([*base, *extra])
    low, high = ANY_SCALE_RANGE
    mean_side = round(32 * ((low * low + low * high + high * high) / 3) ** 0.5)  # the range's mean pixel count
    fixed = {side: net_costs([*base, f"data.output_size={side}"]) for side in (64, mean_side)}
    assert costs["params"] == fixed[64]["params"]
    assert costs["inference_flops"] == fixed[64]["inference_flops"]  # evaluated at x2
    assert costs["train_flops_per_sample"] == fixed[mean_side]["train_flops_per_sample"]
    assert fixed[64]["train_flops_per_sample"] < costs["train_flops_per_sample"]
    with pytest.raises(SystemExit, match="--scale: every scale must be > 1"):
        apply_scale(parse_args(["--scale", "0.5"]))


@pytest.mark.slow
def test_compare_at_a_scale_end_to_end(tmp_path):
    from joint_colsr.compare import compare, parse_args

    out = tmp_path / "cmp"
    report = compare(parse_args(["--models", "joint_paper", "joint_paper_any_scale", "--seeds", "0", "--budget-steps", "11",
                                 "--scale", "2", "--jobs", "1", "--train", "debug=tiny", "logger=none",
                                 "--eval", "data.val_views=1", "--out", str(out)]))
    assert report["scale"] == 2 and report["any_scale_range"] == [1.5, 4.0]
    for name, entry in report["contenders"].items():
        assert abs(entry["train_flops"] / report["budget_flops"] - 1) <= 0.02, name
        metrics = json.loads((out / name / "seed0" / "eval" / "metrics.json").read_text())
        assert list(metrics["by_scale"]) == ["2"] and metrics["by_scale"]["2"]["extrapolation"] is False
        assert metrics["output_size"] == 192  # 96 x 2: the same targets for every contender
    trained = json.loads((out / "joint_paper_any_scale" / "seed0" / "compare_run.json").read_text())["record"]["train"]
    assert "data.scale_range=[1.5,4]" in trained and "data.val_scales=[2]" in trained
    assert "tested at x2" in (out / "comparison.md").read_text()
