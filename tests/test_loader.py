"""The cache path's training loader: vectorised sample keys, batch plans, the ring of reused
buffers, device geometry against PIL, and exact mid-epoch resume."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from joint_colsr.color import resize_bicubic
from joint_colsr.data import (
    ColSRDataModule,
    EpochSeededSampler,
    ImageCache,
    SamplePhotos,
    build_cache,
)
from joint_colsr.data.geometry import augment, crop_resize, hflip
from joint_colsr.data.loaders import CachedBatchLoader
from joint_colsr.data.sampler import sample_keys, sample_uniforms
from joint_colsr.data.views import (
    BOX_DRAWS,
    random_resized_box,
    random_resized_boxes,
    resize_box,
    whole_pixel_boxes,
)
from joint_colsr.run.syncs import HostReadRecorder

from .conftest import assert_resume_from_step_is_exact, random_photo


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    """The embedded photos cached at 32 (validation) and 48 (training, so training crops), 3 per shard."""
    root = tmp_path_factory.mktemp("cache") / "c"
    build_cache(SamplePhotos(), root, output_size=32, train_size=48, shard_size=3, progress=False)
    return root


def _datamodule(cache_dir, **kwargs) -> ColSRDataModule:
    settings = {"batch_size": 2, "num_workers": 0, "input_size": 16, "output_size": 32, "train_samples_per_epoch": 16, "seed": 5}
    dm = ColSRDataModule(None, cache=str(cache_dir), **{**settings, **kwargs})
    dm.setup("fit")
    return dm


# -- sample keys and uniforms -------------------------------------------------------------------


def test_sample_keys_are_deterministic_distinct_and_depend_on_seed_and_epoch():
    indices = np.arange(100_000)
    keys = sample_keys(3, 7, indices)
    assert keys.dtype == np.uint64 and np.array_equal(keys, sample_keys(3, 7, indices))
    assert len(np.unique(keys)) == len(indices)
    assert np.array_equal(sample_keys(3, 7, indices[::-7]), keys[::-7])  # per index, not per position
    assert (sample_keys(4, 7, indices) != keys).mean() > 0.999
    assert (sample_keys(3, 8, indices) != keys).mean() > 0.999
    u = sample_uniforms(keys, 4)
    assert u.shape == (100_000, 4) and u.min() >= 0.0 and u.max() < 1.0
    assert np.allclose(u.mean(axis=0), 0.5, atol=0.01) and abs(np.corrcoef(u[:, 0], u[:, 1])[0, 1]) < 0.02
    assert np.array_equal(sample_uniforms(keys, 2), u[:, :2])  # more draws leave the first ones unchanged
    with pytest.raises(ValueError, match="indices"):
        sample_keys(0, 0, np.array([-1]))


class _Draws:
    """A stand-in generator that hands ``random_resized_box`` given uniforms: the area and
    aspect draws of each attempt, then the position (the calls starting at 0)."""

    def __init__(self, u: np.ndarray) -> None:
        self.attempts, self.position = list(u[: BOX_DRAWS - 2]), list(u[BOX_DRAWS - 2:])

    def uniform(self, low: float, high: float) -> float:
        return low + (high - low) * (self.position if low == 0 else self.attempts).pop(0)


def test_vectorised_boxes_equal_the_scalar_draw():
    u = sample_uniforms(sample_keys(0, 0, np.arange(300)), BOX_DRAWS)
    for width, height, scale, min_side in ((48, 48, (0.25, 1.0), 32), (400, 300, (0.05, 0.3), 64), (30, 90, (0.5, 1.0), 0)):
        boxes = random_resized_boxes(u, width, height, scale, (3 / 4, 4 / 3), min_side=min_side)
        scalar = [random_resized_box(_Draws(row), width, height, scale, (3 / 4, 4 / 3), min_side=min_side) for row in u]
        assert np.allclose(boxes, np.array(scalar), rtol=0, atol=1e-9)
        whole = whole_pixel_boxes(boxes, width, height)
        sides = np.stack([whole[:, 2] - whole[:, 0], whole[:, 3] - whole[:, 1]], 1)
        assert (whole >= 0).all() and (whole[:, 2] <= width).all() and (whole[:, 3] <= height).all()
        assert (sides >= np.floor(np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], 1) + 1e-9)).all()
    with pytest.raises(ValueError, match="uniforms"):
        random_resized_boxes(u[:, :5], 48, 48, (0.25, 1.0), (3 / 4, 4 / 3))


# -- device geometry against PIL ------------------------------------------------------------------


def test_crop_resize_matches_pil_on_whole_pixel_boxes():
    rng = np.random.default_rng(0)
    photos = [random_photo(rng, 96, 96) for _ in range(4)]
    boxes = np.array([[0, 0, 96, 96], [10, 5, 74, 69], [3, 20, 83, 80], [10, 5, 74, 69]])
    images = torch.from_numpy(np.stack(photos).transpose(0, 3, 1, 2).copy())
    out = crop_resize(images, boxes, 32)
    assert out.dtype == torch.uint8 and out.shape == (4, 3, 32, 32)
    for i, box in enumerate(boxes):
        reference = resize_box(photos[i], tuple(float(v) for v in box), 32).transpose(2, 0, 1).astype(int)
        diff = np.abs(out[i].numpy().astype(int) - reference)
        # PIL rounds to uint8 between its two passes; torch keeps floats: at most a level or two.
        assert diff.max() <= 2 and diff.mean() < 0.3, (i, diff.max(), diff.mean())
        assert torch.equal(out[i], crop_resize(images[i:i + 1], boxes[i:i + 1], 32)[0])  # grouped = one by one


def test_hflip_and_augment():
    images = torch.arange(2 * 3 * 4 * 4, dtype=torch.uint8).reshape(2, 3, 4, 4)
    out = hflip(images, torch.tensor([True, False]))
    assert torch.equal(out[0], images[0].flip(-1)) and torch.equal(out[1], images[1])
    flipped = augment(images, 2, torch.tensor([False, True]), np.array([[0, 0, 4, 4], [0, 0, 4, 4]]))
    assert torch.equal(flipped[1], crop_resize(images[1:], np.array([[0, 0, 4, 4]]), 2)[0].flip(-1))
    assert torch.equal(flipped[0], crop_resize(images[:1], torch.tensor([[0, 0, 4, 4]]), 2)[0])  # a tensor: the same
    assert augment(images, 4) is images


def _random_boxes(rng: np.random.Generator, count: int, side: int) -> np.ndarray:
    """Whole-pixel boxes of any size (1 pixel to the whole image) and place."""
    left, top = rng.integers(0, side, count), rng.integers(0, side, count)
    return np.stack([left, top, rng.integers(left + 1, side + 1), rng.integers(top + 1, side + 1)], 1)


def test_batched_crop_resize_is_resize_bicubic_of_each_crop():
    """The batch at once (two products with the kernel's weights) = resize_bicubic of each
    crop alone (what the per-crop-size loop did), up to float32 rounding; flips included."""
    rng = np.random.default_rng(1)
    for side, size in ((96, 32), (40, 64)):  # down (crops of 1 to 96 pixels a side) and up
        boxes = _random_boxes(rng, 48, side)
        images = torch.from_numpy(rng.integers(0, 256, (48, 3, side, side), dtype=np.uint8))
        flip = torch.from_numpy(rng.random(48) < 0.5)
        floats = crop_resize(images.float(), torch.from_numpy(boxes), size, flip)
        ours = crop_resize(images, boxes, size, flip)
        levels = []
        for i, (left, top, right, bottom) in enumerate(boxes.tolist()):
            alone = resize_bicubic(images[i:i + 1, :, top:bottom, left:right].float(), (size, size))[0]
            alone = alone.flip(-1) if flip[i] else alone
            assert (floats[i] - alone).abs().max() < 2e-4  # 0..255 scale: float32 rounding
            levels.append((ours[i].int() - alone.round().clamp(0, 255).int()).abs())
        # uint8: measured 0 or 1 level apart, on ~5e-6 of the values (a sum landing on .5).
        levels = torch.stack(levels)
        assert levels.max() <= 1 and (levels > 0).float().mean() < 1e-4, (levels.max(), (levels > 0).float().mean())


def test_crop_resize_ignores_tf32_and_restores_the_setting():
    rng = np.random.default_rng(2)
    images, boxes = torch.from_numpy(rng.integers(0, 256, (4, 3, 48, 48), dtype=np.uint8)), _random_boxes(rng, 4, 48)
    exact = crop_resize(images, boxes, 32)
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    try:
        assert torch.equal(crop_resize(images, boxes, 32), exact)
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision(before)
    backend = getattr(torch.backends.mkldnn, "matmul", None)
    if backend is not None and hasattr(backend, "fp32_precision"):  # torch >= 2.9's per-backend setting
        old = backend.fp32_precision
        backend.fp32_precision = "tf32"  # now the global getter refuses to answer
        try:
            assert torch.equal(crop_resize(images, boxes, 32), exact) and backend.fp32_precision == "tf32"
        finally:
            backend.fp32_precision = old


class _AtenCalls(TorchDispatchMode):
    """Counts the aten calls the host makes (each one a kernel launch, or more, on a GPU)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def test_batch_geometry_costs_the_same_host_calls_at_any_batch_size(cache_dir):
    """Issue 23: crops and flips of a batch in a bounded number of kernels: aten calls per batch
    grow by at most 20% from batch 16 to 256, however many crop sizes the batch holds (the
    per-crop-size loop made 197 at 16 and 2,923 at 256 here; now 45 at both)."""
    side, size = 96, 32
    counts, distinct = {}, {}
    for batch in (16, 256):
        u = sample_uniforms(sample_keys(0, 0, np.arange(batch)), 1 + BOX_DRAWS)
        boxes = whole_pixel_boxes(random_resized_boxes(u[:, 1:], side, side, (0.1, 1.0), (3 / 4, 4 / 3), min_side=size),
                                  side, side)
        distinct[batch] = len(np.unique(boxes[:, 2:] - boxes[:, :2], axis=0))
        images = torch.zeros(batch, 3, side, side, dtype=torch.uint8)
        flip, boxes = torch.from_numpy(u[:, 0] < 0.5), torch.from_numpy(boxes)
        augment(images, size, flip, boxes)  # the first call builds the weights for every crop side
        with _AtenCalls() as calls:
            augment(images, size, flip, boxes)
        counts[batch] = calls.count
    assert distinct[16] == 16 and distinct[256] > 200
    assert counts[256] <= 1.2 * counts[16], counts
    # The same through the loader and on_after_batch_transfer (LAB conversion included), which
    # reads nothing back: the boxes came as a tensor with the batch.
    for batch in (16, 256):
        dm = _datamodule(cache_dir, batch_size=batch, train_samples_per_epoch=256)
        loaded = next(iter(dm.train_dataloader()))
        assert loaded["boxes"].dtype == torch.int64 and loaded["boxes"].shape == (batch, 4)
        dm.on_after_batch_transfer(loaded, 0)
        with _AtenCalls() as calls, HostReadRecorder() as reads:
            dm.on_after_batch_transfer(loaded, 0)
        counts[f"loader {batch}"] = calls.count
        assert reads.reads == []
    assert counts["loader 256"] <= 1.2 * counts["loader 16"], counts


@pytest.mark.parametrize("call,match", [
    (lambda x: hflip(x, torch.tensor([1, 0])), "bool"),
    (lambda x: hflip(x[0], torch.tensor([True])), r"\(B, C, H, W\)"),
    (lambda x: crop_resize(x, np.array([[0, 0, 5, 4], [0, 0, 4, 4]]), 2), "inside the 4x4"),
    (lambda x: crop_resize(x, np.array([[2, 0, 2, 4], [0, 0, 4, 4]]), 2), "positive sides"),
    (lambda x: crop_resize(x, np.zeros((2, 4)), 2), "integers"),
    (lambda x: crop_resize(x, torch.zeros(2, 4, dtype=torch.int32), 2), "int64 tensor"),
    (lambda x: crop_resize(x, np.array([[0, 0, 4, 4], [0, 0, 4, 4]]), 2, torch.tensor([True])), "bool tensor"),
    (lambda x: crop_resize(x, np.array([[0, 0, 4, 4], [0, 0, 4, 4]]), 0), "size"),
    (lambda x: augment(x, 2), "without boxes"),
])
def test_geometry_rejects_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call(torch.zeros(2, 3, 4, 4, dtype=torch.uint8))


# -- the loader -----------------------------------------------------------------------------


def test_loader_batches_are_the_datasets_samples_in_sampler_order(cache_dir):
    dm = _datamodule(cache_dir, with_labels=False)
    loader = dm.train_dataloader()
    assert isinstance(loader, CachedBatchLoader) and dm.train_set.crop
    loader.sampler.set_epoch(2)
    order = loader.sampler.epoch_indices()
    keys = sample_keys(5, 2, order)
    seen = []
    for batch in loader:
        assert "boxes" in batch and batch["flip"].dtype == torch.bool and batch["rgb"].shape[-1] == 48
        rgb = dm.on_after_batch_transfer(batch, 0)["rgb_target"]
        for j, index in enumerate(batch["index"].tolist()):
            n = len(seen)
            assert index == order[n]
            assert torch.equal(rgb[j], dm.train_set[(index, keys[n])]["rgb"])  # the per-sample API: same image
            seen.append(index)
    assert len(seen) == len(loader) * 2 == 16
    again = [b["index"].clone() for b in loader]
    assert torch.equal(torch.cat(again), torch.tensor(seen))  # the same epoch again: the same batches


def test_ring_never_overwrites_a_batch_the_consumer_still_holds(cache_dir):
    dm = _datamodule(cache_dir, train_samples_per_epoch=40)
    loader = dm.train_dataloader()
    assert loader.HOLD == 3
    held = []
    for epoch in range(3):
        loader.sampler.set_epoch(epoch)
        for n, batch in enumerate(loader):
            held = [*held[-2:], (batch, batch["index"].clone())]  # the last 3 batches, also across the epoch's end
            time.sleep(0.01)  # the gathering thread runs ahead as far as it may
            for old, index in held:
                fresh = np.empty_like(old["rgb"].numpy())
                dm.train_set.split.gather(index.numpy() % dm.train_set.num_photos, fresh)
                assert np.array_equal(old["rgb"].numpy(), fresh) and torch.equal(old["index"], index)
            if epoch == 1 and n == 6:
                break  # an epoch left early (limit_train_batches): the next one starts in another slot
    slots = {id(b["slot"]) for b, _ in held}
    assert len(slots) == 3 and len(loader.ring()) == loader.HOLD + loader.prefetch  # reused, not reallocated
    # A batch kept past its lifetime is refused where training meets it, not silently used.
    stale = [b for b in loader]
    with pytest.raises(RuntimeError, match="reused"):
        dm.on_after_batch_transfer(stale[0], 0)


def test_loader_shards_ranks_and_resumes_mid_epoch(cache_dir):
    dm = _datamodule(cache_dir)
    full = [b["index"].clone() for b in dm.train_dataloader()]
    loader = dm.train_dataloader()
    loader.load_state_dict({"epoch": 0, "samples_done": 6, "epoch_done": 0})
    resumed = [b["index"].clone() for b in loader]
    assert torch.equal(torch.cat(resumed), torch.cat(full)[6:])
    assert torch.equal(torch.cat([b["index"].clone() for b in loader]), torch.cat(full))  # the next iteration: whole epoch
    # A loader left after one batch stops its thread; the next iteration starts over.
    it = iter(loader)
    first = next(it)["index"].clone()
    assert torch.equal(torch.cat([b["index"].clone() for b in loader]), torch.cat(full)) and torch.equal(first, full[0])
    threads = _datamodule(cache_dir, cache_gather_threads=2).train_dataloader()
    assert threads.gather_threads == 2
    for one, two in zip(dm.train_dataloader(), threads):  # two threads gather the same batches
        assert torch.equal(one["rgb"], two["rgb"]) and torch.equal(one["index"], two["index"])
    with pytest.raises(ValueError, match="data.cache_gather_threads"):
        _datamodule(cache_dir, cache_gather_threads=0)
    ranks = []
    for rank in range(2):
        sampler = EpochSeededSampler(len(dm.train_set), True, seed=5, rank=rank, world_size=2)
        shard = CachedBatchLoader(dm.train_set, sampler, 2, False, False, lambda: 0, lambda: float("inf"))
        ranks.append({i for b in shard for i in b["index"].tolist()})
    assert ranks[0].isdisjoint(ranks[1]) and ranks[0] | ranks[1] == set(range(16))


def test_flip_only_and_labels_without_crops(tmp_path):
    from joint_colsr.data.coco import CocoSource

    from .test_coco import make_tiny_coco

    coco = make_tiny_coco(tmp_path / "coco")
    build_cache(CocoSource(str(coco)), tmp_path / "c", output_size=32, progress=False)
    dm = ColSRDataModule(None, cache=str(tmp_path / "c"), batch_size=2, num_workers=0, input_size=16, output_size=32,
                         train_samples_per_epoch=10, with_labels=True)
    dm.setup("fit")
    split = ImageCache.open(tmp_path / "c").splits["train"]
    flips = 0
    for batch in dm.train_dataloader():
        assert "boxes" not in batch and batch["labels"].dtype == torch.uint8
        out = dm.on_after_batch_transfer(batch, 0)
        for j, index in enumerate(batch["index"].tolist()):
            cached = torch.from_numpy(np.array(split.image(index % len(split))))
            flipped = bool(batch["flip"][j])
            flips += flipped
            assert torch.equal(out["rgb_target"][j], cached.flip(-1) if flipped else cached)
            assert torch.equal(batch["labels"][j], dm.train_set.labels(split.labels[index % len(split)]))
    assert 0 < flips < 10


# -- exact resume through Lightning ---------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_cache_path_mid_epoch_resume_is_bitwise_exact(compose_cfg, cache_dir, tmp_path, workers):
    over = ["model.net.width_mult=0.0625", f"data.cache={cache_dir}", "data.output_size=32", "data.input_size=16",
            "data.batch_size=2", f"data.num_workers={workers}", "data.train_samples_per_epoch=8", "data.val_views=1",
            "trainer.accelerator=cpu", "trainer.deterministic=true", "trainer.limit_val_batches=1", "trainer.max_epochs=2",
            "callbacks.model_summary.max_depth=0", "callbacks.progress_bar.refresh_rate=0", "logger=none", "seed=7",
            "+callbacks.model_checkpoint.every_n_train_steps=1", "callbacks.model_checkpoint.save_top_k=-1",
            "callbacks.model_checkpoint.monitor=null", "callbacks.model_checkpoint.filename='step{step}'"]
    assert_resume_from_step_is_exact(compose_cfg, tmp_path, over, step=2, steps=8)


def test_validation_workers_persist_only_when_training_has_none(cache_dir):
    """num_workers=N must not keep 2N processes alive: the file path's training workers and
    validation's persistent ones. The cache path trains without workers: validation's persist."""
    import lightning.pytorch as pl
    from lightning.pytorch.trainer.states import TrainerFn

    from joint_colsr.data import SamplePhotos

    def loaders(dm: ColSRDataModule):
        trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
        trainer.state.fn = TrainerFn.FITTING
        dm.trainer = trainer
        return dm.train_dataloader(), dm.val_dataloader()

    files = ColSRDataModule(SamplePhotos(), batch_size=2, num_workers=2, input_size=16, output_size=32)
    files.setup("fit")
    train, val = loaders(files)
    assert train.persistent_workers and not val.persistent_workers
    cached = _datamodule(cache_dir, num_workers=2)
    train, val = loaders(cached)
    assert not isinstance(train, torch.utils.data.DataLoader) and val.persistent_workers
    alone = ColSRDataModule(SamplePhotos(), batch_size=2, num_workers=2, input_size=16, output_size=32)
    alone.setup("validate")
    assert alone.val_dataloader().persistent_workers  # validate/test alone: no training workers


def test_uniforms_from_a_later_draw_are_the_same_columns():
    keys = sample_keys(1, 2, np.arange(50))
    assert np.array_equal(sample_uniforms(keys, 3, first=1000), sample_uniforms(keys, 1003)[:, 1000:])
