"""No host sync in a training-loop iteration between logging steps (what would make a GPU wait), found on CPU.

A few training steps of each recipe users run (the default one, ``experiment=paper``, random
crops from a cache larger than the output, ``model=srgan``, ``model=joint_exemplar`` with
thin-plate-spline exemplars, ``trainer=ddp`` on 2 ranks) run
under :class:`~joint_colsr.run.syncs.HostReadRecorder` (``tests/ddp_probe.py``'s
``RecordHostReads``), which records every call that would block the host on CUDA
(``.item()``, ``bool(t)``, ``.cpu()``, ``nonzero``, ``torch.linalg.solve``, ``torch.tensor(..., device=)``, a copy between the host
and a device from pageable memory...) and the training-loop iteration it belongs to: the
fetch of the next batch, the transfer and ``on_after_batch_transfer`` of this one, its step,
its hooks and Lightning's logging after ``on_train_batch_end``
(:func:`~joint_colsr.run.syncs.hook_training_iterations`). Only the first iteration
(start-up), the logging iterations (every ``trainer.log_every_n_steps``: Lightning reads the
logged values there) and the epoch's last (validation, checkpoints) may read. The controls
prove each kind of sync is caught where it happens.
"""

from __future__ import annotations

import collections
import contextlib
import json
import types
from pathlib import Path

import pytest
import torch

from joint_colsr.run.callbacks import StopOnNonFinite
from joint_colsr.run.syncs import (
    HostReadRecorder,
    SyncDebug,
    _CheckedTransfer,
    blocking_copy,
    deliberate_sync,
    hook_training_iterations,
    pinned_batch_problems,
)
from joint_colsr.train import train

from .._cli import output_tail, run_train

LOG_EVERY = 4
STEPS = 12
#: Iterations that may read: start-up and the logging ones (the last, 11, is one: validation runs after it).
ALLOWED = {-1, 0} | {b for b in range(STEPS) if (b + 1) % LOG_EVERY == 0}
QUIET = set(range(STEPS)) - ALLOWED

BASE = ["data=samples", "trainer.accelerator=cpu", "model.net.width_mult=0.0625", "data.batch_size=2",
        "data.num_workers=0", "data.val_views=1", "trainer.max_epochs=1", f"trainer.log_every_n_steps={LOG_EVERY}", "logger=csv"]
TINY = [*BASE, f"data.train_samples_per_epoch={2 * STEPS}", "trainer.limit_val_batches=1"]
# The NaN guard as check_every_n_steps=auto resolves on a GPU (on a CPU it reads every step: no cost there).
GPU_GUARD = [f"callbacks.stop_on_non_finite.check_every_n_steps={LOG_EVERY}"]
EXEMPLAR = ["model=joint_exemplar", "model.net.blocks=1", "data.exemplar=mix", "data.exemplar_drop=0.3",
            "data.exemplar_warp=tps", "data.exemplar_size=64"]
SRGAN = ["model=srgan", "model.net.blocks=1", "model.discriminator.width_mult=0.0625", "model.ema_decay=0.9"]


def _probe(out: Path) -> list[str]:
    return ["+callbacks.probe._target_=tests.ddp_probe.RecordHostReads", f"+callbacks.probe.out_dir={out}"]


def _load(probe: Path, rank: int = 0) -> dict[int, list[dict]]:
    return {int(b): r for b, r in json.loads((probe / f"reads_rank{rank}.json").read_text()).items()}


def _reads_per_iteration(compose_cfg, overrides: list[str], tmp_path: Path) -> dict[int, list[dict]]:
    probe = tmp_path / "probe"
    train(compose_cfg([*overrides, *TINY, *_probe(probe)]))
    return _load(probe)


def _between_logging_steps(per_iteration: dict[int, list[dict]]) -> dict[int, collections.Counter]:
    """The reads of the quiet iterations (those that must not read), deliberate ones left out."""
    return {b: collections.Counter(f"{r['call']} at {r['where']}" for r in reads if not r["deliberate"])
            for b, reads in per_iteration.items() if b not in ALLOWED and any(not r["deliberate"] for r in reads)}


@pytest.fixture(scope="module")
def crop_cache(tmp_path_factory) -> Path:
    """The embedded photos cached at 256 (validation) and 320 (training: random crops resized to 256)."""
    from joint_colsr.data import SamplePhotos
    from joint_colsr.data.cache import build_cache

    root = tmp_path_factory.mktemp("cache") / "c320"
    build_cache(SamplePhotos(), root, output_size=256, train_size=320, shard_size=4, progress=False)
    return root


@pytest.mark.parametrize("overrides", [
    ["trainer.precision=32-true", *GPU_GUARD],  # the default recipe (its callbacks, the EMA)
    ["experiment=paper"],
    ["trainer=gpu", *GPU_GUARD],  # the default recipe as it runs on a GPU (bf16-mixed)
    # The GAN (manual optimization, two optimizer steps per batch, its own generator EMA);
    # float32 because CPUs lack bf16 antialiased bicubic.
    ["trainer=gpu", "trainer.precision=32-true", *SRGAN, *GPU_GUARD],
    # Random resized crops from a cache 1.25x the output (`preprocess train_size=320`): the
    # CachedBatchLoader, boxes and flips in the batch, cropped on the device.
    ["trainer=gpu", "trainer.precision=32-true", "data.cache=CACHE", "data.train_crop=random_resized", *GPU_GUARD],
    # Exemplars (issue 26): a mix of warped (thin-plate spline) and other-photo exemplars,
    # some samples without one: the warp, the LAB conversion and the fusion on the device.
    ["trainer=gpu", "trainer.precision=32-true", *EXEMPLAR, *GPU_GUARD],
], ids=["default", "paper", "trainer_gpu", "srgan", "cache_crops_320", "exemplar_tps"])
def test_no_host_sync_between_logging_steps(overrides, compose_cfg, tmp_path, request):
    if "data.cache=CACHE" in overrides:
        cache = request.getfixturevalue("crop_cache")
        overrides = [o.replace("CACHE", str(cache)) for o in overrides]
    per_iteration = _reads_per_iteration(compose_cfg, overrides, tmp_path)
    assert _between_logging_steps(per_iteration) == {}
    # The recorder sees what it should: every iteration ran inside the window, and Lightning
    # reads the logged loss back at the first logging step.
    assert max(per_iteration) == STEPS - 1, sorted(per_iteration)
    assert any(r["call"] == "item" for r in per_iteration.get(LOG_EVERY - 1, [])), per_iteration


def test_the_cache_run_really_crops_on_the_device(crop_cache, compose_cfg, monkeypatch, tmp_path):
    # What cache_crops_320 traces: batches of 320-pixel images with crop boxes, cropped to 256.
    from joint_colsr.data import datamodule

    seen = []
    augment = datamodule.augment

    def recording(rgb, size, flip, boxes):
        seen.append((tuple(rgb.shape[-2:]), boxes is not None))
        return augment(rgb, size, flip, boxes)

    monkeypatch.setattr(datamodule, "augment", recording)
    cfg = compose_cfg(["trainer.precision=32-true", f"data.cache={crop_cache}", "data.train_crop=random_resized", *BASE,
                       "data.train_samples_per_epoch=4", "trainer.limit_val_batches=1"])
    train(cfg)
    assert seen and all(s == ((320, 320), True) for s in seen), seen


def test_ddp_makes_no_host_read_between_logging_steps_on_any_rank(tmp_path):
    """Lightning 2.6 broadcasts rank 0's SIGTERM flag before every step under DDP (a device
    tensor and a host read); the suite lets it happen only after logging steps
    (preemption.broadcast_sigterm_at_logging_steps), as a deliberate sync. Traced on 2 gloo ranks."""
    run_dir, probe = tmp_path / "run", tmp_path / "probe"
    proc = run_train(["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "debug=tiny",
                      f"data.train_samples_per_epoch={2 * 4 * STEPS}", "trainer.limit_train_batches=null",
                      "trainer.limit_val_batches=1", f"trainer.log_every_n_steps={LOG_EVERY}", "logger=csv", *GPU_GUARD,
                      f"hydra.run.dir={run_dir}", *_probe(probe)], tmp_path)
    assert proc.returncode == 0, output_tail(proc)
    for rank in (0, 1):
        reads = _load(probe, rank)
        assert max(reads) == STEPS - 1, f"rank {rank}: {sorted(reads)}"
        assert any(r["call"] == "item" for r in reads.get(LOG_EVERY - 1, [])), reads  # Lightning's read of the logged loss
        assert _between_logging_steps(reads) == {}, f"rank {rank}"
        # The broadcast (a device tensor, then .item()) opens iteration 0 and each one after a logging step.
        broadcasts = {b for b, rs in reads.items() for r in rs if r["deliberate"] == "DDP SIGTERM broadcast after a logging step"}
        assert broadcasts == {b for b in range(STEPS) if b % LOG_EVERY == 0}, f"rank {rank}: {broadcasts}"


# -- controls: each kind of sync, put where it would hide, is caught in every quiet iteration ----------


def _controlled(compose_cfg, tmp_path, overrides=()) -> dict[int, collections.Counter]:
    return _between_logging_steps(_reads_per_iteration(compose_cfg, ["experiment=paper", *overrides], tmp_path))


def _every_quiet_iteration(found: dict[int, collections.Counter], call: str, where: str) -> None:
    assert set(found) == QUIET, found
    for b, counts in found.items():
        assert any(call in what and where in what for what in counts), (b, counts)


def test_a_per_step_read_in_a_callback_is_caught(compose_cfg, tmp_path):
    # The NaN check read every step (check_every_n_steps=1) is a per-step sync.
    found = _controlled(compose_cfg, tmp_path, ["callbacks.stop_on_non_finite.check_every_n_steps=1"])
    assert set(found) == QUIET
    assert all("callbacks.py" in where for counts in found.values() for where in counts)


def _reading_the_loss_every_step(monkeypatch) -> None:
    """Make the training step read its loss back (``.item()``, a sync) every step: a control."""
    from joint_colsr.systems.colsr import ColSRSystem

    step = ColSRSystem.training_step

    def reading_step(self, batch, batch_idx):
        loss = step(self, batch, batch_idx)
        self.last_loss = loss.item()
        return loss

    monkeypatch.setattr(ColSRSystem, "training_step", reading_step)


def test_an_item_in_the_step_is_caught(compose_cfg, tmp_path, monkeypatch):
    _reading_the_loss_every_step(monkeypatch)
    _every_quiet_iteration(_controlled(compose_cfg, tmp_path), "item", "reading_step")


def _before_the_batch_conversion(monkeypatch, extra) -> None:
    """Run ``extra(batch)`` at the start of every ``on_after_batch_transfer`` (a control's sync)."""
    from joint_colsr.data.datamodule import ColSRDataModule

    after = ColSRDataModule.on_after_batch_transfer

    def patched(self, batch, dataloader_idx):
        extra(batch)
        return after(self, batch, dataloader_idx)

    monkeypatch.setattr(ColSRDataModule, "on_after_batch_transfer", patched)


def test_a_read_in_on_after_batch_transfer_is_caught(compose_cfg, tmp_path, monkeypatch):
    def reading_after(batch):
        if not bool(batch["rgb"].any()):
            raise AssertionError("a black batch")

    _before_the_batch_conversion(monkeypatch, reading_after)
    _every_quiet_iteration(_controlled(compose_cfg, tmp_path), "__bool__", "reading_after")


@pytest.mark.parametrize(("call", "sync"), [
    ("__getitem__(bool mask)", lambda batch: batch["rgb"][batch["rgb"] > 128]),  # its size is the mask's count
    ("linalg.solve", lambda batch: torch.linalg.solve(torch.eye(2), torch.ones(2))),  # kornia's get_tps_transform does this
], ids=["bool_mask", "solve"])
def test_a_value_sized_output_or_a_checked_solve_is_caught(call, sync, compose_cfg, tmp_path, monkeypatch):
    _before_the_batch_conversion(monkeypatch, sync)
    _every_quiet_iteration(_controlled(compose_cfg, tmp_path), call, "test_host_syncs.py")


def test_a_device_tensor_built_in_the_fetch_path_is_caught(compose_cfg, tmp_path, monkeypatch):
    # The DataLoader's collate on the main process (num_workers=0) builds a tensor on the
    # training device: a pageable copy on a GPU. Fetched one batch ahead, so iteration k makes
    # batch k + 1's (the last iteration's fetch finds the loader exhausted).
    from joint_colsr.data import datamodule

    collate = datamodule.collate_samples

    def collate_on_device(data):
        batch = collate(data)
        batch["weights"] = torch.tensor([1.0] * len(batch["index"]), device="cpu")
        return batch

    monkeypatch.setattr(datamodule, "collate_samples", collate_on_device)
    _every_quiet_iteration(_controlled(compose_cfg, tmp_path), "tensor(..., device=...)", "collate_on_device")


def test_a_pageable_copy_to_a_device_is_caught(compose_cfg, tmp_path, monkeypatch):
    # CPU-only machines have no second device; the meta device stands in for the GPU: a
    # batch tensor from (pageable) host memory copied to it inside on_after_batch_transfer.
    def copying_after(batch):
        batch["index_on_device"] = batch["index"].to("meta", non_blocking=True)

    _before_the_batch_conversion(monkeypatch, copying_after)
    _every_quiet_iteration(_controlled(compose_cfg, tmp_path), "to: pageable host-to-device copy", "copying_after")


def test_blocking_copy_classifies_each_direction():
    host, device = torch.ones(2), torch.ones(2, device="meta")
    pinned = types.SimpleNamespace(device=torch.device("cpu"), is_pinned=lambda: True)  # no pinned memory without an accelerator
    assert blocking_copy(host, "meta", non_blocking=True) == "pageable host-to-device copy"
    assert blocking_copy(pinned, "meta", non_blocking=False) == "blocking host-to-device copy"
    assert blocking_copy(pinned, "meta", non_blocking=True) is None
    assert blocking_copy(device, "cpu", non_blocking=True) == "device-to-host copy"
    assert blocking_copy(host, "cpu", non_blocking=False) is None
    assert blocking_copy(device, "meta", non_blocking=False) is None
    assert blocking_copy(host, None, non_blocking=False) is None  # .to(dtype)
    with HostReadRecorder() as recorder:
        host.to(torch.float16)
        host.to("cpu")
        host.to(device)  # .to(other): other's device
        host.to(device="meta", copy=True)
        with contextlib.suppress(NotImplementedError, RuntimeError):  # recorded before the call; meta holds no data to copy out
            device.to("cpu", non_blocking=True)
        torch.empty(2, device="meta").copy_(host)
        with contextlib.suppress(NotImplementedError, RuntimeError):
            host.clone().copy_(device)
    assert [r.call for r in recorder.reads] == [
        "to: pageable host-to-device copy", "to: pageable host-to-device copy", "to: device-to-host copy",
        "copy_: pageable host-to-device copy", "copy_: device-to-host copy"], recorder.reads


def test_deliberate_syncs_are_marked():
    with HostReadRecorder() as recorder:
        torch.ones(1).item()
        with deliberate_sync("on purpose"):
            torch.ones(1).item()
    assert [r.deliberate for r in recorder.reads] == [None, "on purpose"]


def test_the_window_brackets_fetch_transfer_step_and_logging(compose_cfg, monkeypatch):
    """What :class:`SyncDebug` turns CUDA's mode on around, in order, per iteration: the fetch
    of the next batch, the transfer, on_after_batch_transfer, the step, on_train_batch_end,
    and Lightning's logging after it."""
    import lightning.pytorch as pl

    from joint_colsr.data import datamodule
    from joint_colsr.data.datamodule import ColSRDataModule
    from joint_colsr.systems.colsr import ColSRSystem

    events: list[str] = []

    def mark(name, fn):
        def marked(*args, **kwargs):
            events.append(name)
            return fn(*args, **kwargs)
        return marked

    monkeypatch.setattr(datamodule, "collate_samples", mark("fetch", datamodule.collate_samples))
    monkeypatch.setattr(ColSRDataModule, "on_after_batch_transfer", mark("after_transfer", ColSRDataModule.on_after_batch_transfer))
    monkeypatch.setattr(ColSRSystem, "training_step", mark("step", ColSRSystem.training_step))
    from lightning.pytorch.trainer.connectors.logger_connector.logger_connector import _LoggerConnector

    monkeypatch.setattr(_LoggerConnector, "update_train_step_metrics", mark("logging", _LoggerConnector.update_train_step_metrics))

    class Window(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            self.undo = hook_training_iterations(trainer, lambda t: events.append("open"), lambda t: events.append("close"))
            trainer.strategy.batch_to_device = mark("transfer", trainer.strategy.batch_to_device)

        def on_train_batch_end(self, trainer, *args):
            events.append("batch_end")

        def on_train_end(self, trainer, pl_module):
            self.undo()
            assert "advance" not in trainer.fit_loop.epoch_loop.__dict__

    cfg = compose_cfg(["experiment=paper", *BASE, "data.train_samples_per_epoch=6", "trainer.limit_val_batches=1",
                       "trainer.num_sanity_val_steps=0"])
    monkeypatch.setattr("joint_colsr.train.build_callbacks", _adding(Window()))
    train(cfg)
    iterations = "|".join(events).split("open|")[1:]
    one = "fetch|transfer|after_transfer|step|batch_end|logging|close|"
    # Each iteration fetches the batch after its own (Lightning fetches one ahead); what
    # follows the last one (the fetch that ends the epoch, validation) is outside the window.
    assert len(iterations) == 3 and iterations[:2] == [one, one], "|".join(events)
    assert iterations[-1].startswith(one) and "open" not in iterations[-1], "|".join(events)


def _adding(callback):
    from joint_colsr import assembly

    def build_callbacks(cfg, system=None):
        return [*assembly.build_callbacks(cfg, system), callback]
    return build_callbacks


def test_hooks_of_several_callers_nest_and_undo_in_any_order():
    class Loop:
        def advance(self, x):
            calls.append(("advance", x))

    calls: list = []
    trainer = types.SimpleNamespace(fit_loop=types.SimpleNamespace(epoch_loop=Loop()))
    loop = trainer.fit_loop.epoch_loop
    undo_a = hook_training_iterations(trainer, lambda t: calls.append("a+"), lambda t: calls.append("a-"))
    undo_b = hook_training_iterations(trainer, lambda t: calls.append("b+"), lambda t: calls.append("b-"))
    loop.advance(1)
    assert calls == ["b+", "a+", ("advance", 1), "a-", "b-"]
    undo_a()
    calls.clear()
    loop.advance(2)
    assert calls == ["b+", ("advance", 2), "b-"]
    undo_b()
    assert "advance" not in loop.__dict__


def test_sync_debug_refuses_a_pageable_batch_in_a_quiet_iteration():
    # The GPU-side check of the batch transfer, with the meta device standing in for CUDA.
    batch = {"rgb": torch.zeros(1, 3, 2, 2, dtype=torch.uint8), "meta": {"index": torch.ones(1, device="meta")}, "n": 1}
    assert pinned_batch_problems(batch, torch.device("meta")) == ["rgb: pageable host-to-device copy"]
    assert pinned_batch_problems(batch, torch.device("cpu")) == ["meta.index: device-to-host copy"]
    trainer = types.SimpleNamespace(training=True, strategy=types.SimpleNamespace(root_device=torch.device("meta")))
    callback = SyncDebug("error")
    moved = []
    transfer = _CheckedTransfer(callback, trainer, lambda b, *a, **k: moved.append(b) or b)
    transfer(batch, dataloader_idx=0)  # outside the window: moved as it is
    callback._active = True
    with pytest.raises(RuntimeError, match="rgb: pageable host-to-device copy.*data.pin_memory=true"):
        transfer(batch, dataloader_idx=0)
    assert moved == [batch]


class _FakeCudaMode:
    """``torch.cuda``'s sync-debug-mode calls, on a CPU: the mode is a variable."""

    def __init__(self) -> None:
        self.mode = 0

    def is_available(self) -> bool:
        return True

    def get_sync_debug_mode(self) -> int:
        return self.mode

    def set_sync_debug_mode(self, mode) -> None:
        self.mode = {"warn": 1, "error": 2}.get(mode, mode)


@pytest.mark.parametrize("read_in_step", [False, True], ids=["clean", "item_in_step"])
def test_sync_debug_windows_are_the_quiet_iterations(read_in_step, compose_cfg, monkeypatch, tmp_path):
    """SyncDebug's CUDA mode (a stand-in on CPU) is on in exactly the quiet iterations, from
    before the fetch to after the logging; no read of the clean recipe happens while it is on,
    and an .item() in the step happens while it is on, in each quiet iteration."""
    from joint_colsr.run import syncs

    fake = _FakeCudaMode()
    monkeypatch.setattr(syncs, "_cuda", fake)
    if read_in_step:
        _reading_the_loss_every_step(monkeypatch)
    debug = SyncDebug("error")
    monkeypatch.setattr("joint_colsr.train.build_callbacks", _adding(debug))
    with HostReadRecorder(step_of=lambda: fake.mode) as recorder:  # each read with the mode it met
        train(compose_cfg(["experiment=paper", *TINY]))
    assert debug.checked_iterations == len(QUIET) and fake.mode == 0
    while_on = [r for r in recorder.reads if r.step]
    if read_in_step:
        assert len(while_on) == len(QUIET) and all(r.call == "item" and "reading_step" in r.where for r in while_on)
    else:
        assert while_on == []


def test_nan_check_auto_reads_at_logging_steps_on_accelerators():
    from lightning.pytorch.accelerators import CPUAccelerator, CUDAAccelerator

    for accelerator, expected in ((CPUAccelerator(), 1), (CUDAAccelerator(), 7)):
        guard = StopOnNonFinite(check_every_n_steps="auto")
        trainer = types.SimpleNamespace(accelerator=accelerator, log_every_n_steps=7, global_step=0)
        guard.on_train_start(trainer, None)
        assert guard.check_every_n_steps == expected
    with pytest.raises(ValueError, match="check_every_n_steps"):
        StopOnNonFinite(check_every_n_steps="sometimes")


def test_speed_sync_debug_adds_the_callback_and_checks_its_value(compose_cfg):
    from joint_colsr.assembly import build_callbacks
    from joint_colsr.run.config_checks import ConfigError, check_config

    cfg = compose_cfg(["debug=tiny", "speed.sync_debug=error"])
    check_config(cfg)
    assert [c.mode for c in build_callbacks(cfg) if isinstance(c, SyncDebug)] == ["error"]
    assert not any(isinstance(c, SyncDebug) for c in build_callbacks(compose_cfg(["debug=tiny"])))
    with pytest.raises(ConfigError, match="speed.sync_debug"):
        check_config(compose_cfg(["debug=tiny", "speed.sync_debug=loud"]))
    with pytest.raises(ValueError, match="speed.sync_debug"):
        SyncDebug("loud")
