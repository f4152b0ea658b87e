"""Shared fixtures: composed Hydra configs for tiny CPU runs, and image folders made on the spot."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"

os.environ.setdefault("WANDB_MODE", "offline")
torch.set_num_threads(1)

# Every deadline in the suite only bounds a hang; none is a speed requirement. They are set
# for a machine loaded well beyond its cores (a shared workstation, a CI runner), and
# `make test-stress` (tests/stress.py) stretches them further by the load it adds.
SLOWDOWN = float(os.environ.get("JOINT_COLSR_TEST_SLOWDOWN", "1"))


def hang_bound(seconds: float) -> float:
    """Seconds after which a test gives up waiting: ``seconds`` (already generous on a busy
    machine) times ``JOINT_COLSR_TEST_SLOWDOWN``."""
    return seconds * SLOWDOWN


def pytest_configure(config: pytest.Config) -> None:
    global _TERMINAL_CONFIG
    if not hasattr(config, "workerinput"):  # the controlling process (or the only one)
        _TERMINAL_CONFIG = config


_TERMINAL_CONFIG: pytest.Config | None = None


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Name a failure the moment it happens, not only in the final summary, so a run that is
    interrupted (or read while running) still says which tests failed. Under xdist the
    workers' reports arrive here, in the controlling process."""
    if _TERMINAL_CONFIG is None or not report.failed:
        return
    reporter = _TERMINAL_CONFIG.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        where = "" if report.when == "call" else f" (in {report.when})"
        reporter.ensure_newline()
        reporter.write_line(f"FAILED {report.nodeid}{where}", red=True, bold=True)


def compose_config(config_name: str = "train", overrides: list[str] | None = None, output_dir: Path | None = None) -> DictConfig:
    """Compose a config as the CLI would, with the run directory set to ``output_dir``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides or [], return_hydra_config=True)
    if output_dir is not None:
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(output_dir)
            cfg.paths.output_dir = str(output_dir)
        HydraConfig.instance().set_config(cfg)
    return cfg


@pytest.fixture
def compose_cfg(tmp_path):
    """``compose_cfg(overrides)`` -> a config whose run directory is a fresh temp folder."""

    def _compose(overrides: list[str] | None = None, config_name: str = "train") -> DictConfig:
        return compose_config(config_name, overrides, output_dir=tmp_path / "run")

    yield _compose
    GlobalHydra.instance().clear()


def random_photo(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A smooth colourful image (random low-frequency fields), more photo-like than noise."""
    small = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)
    arr = np.asarray(img).astype(np.int16) + rng.integers(-8, 9, size=(height, width, 3))
    return np.clip(arr, 0, 255).astype(np.uint8)


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """A nested folder of 8 small colour JPEG/PNG images."""
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    for i in range(8):
        sub = root / ("a" if i % 2 else "b") / ("deep" if i % 3 == 0 else "")
        sub.mkdir(parents=True, exist_ok=True)
        ext = ".jpg" if i % 2 else ".png"
        Image.fromarray(random_photo(rng, 120 + 10 * i, 160)).save(sub / f"img{i}{ext}")
    return root


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    """``last.ckpt`` of one tiny training run (``debug=tiny``), shared by the tests that read checkpoints."""
    from joint_colsr.train import train

    out = tmp_path_factory.mktemp("tiny_run")
    train(compose_config("train", ["debug=tiny", "callbacks.model_summary.max_depth=1"], output_dir=out))
    GlobalHydra.instance().clear()
    return out / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A one-node SLURM cluster on this machine for the session (``joint_colsr.ops.slurm_local``):
    started on first use, every job cancelled and the daemons stopped at the end. Clients
    (sbatch, submitit, the tests' subprocesses) find it through ``SLURM_CONF``.
    Skips where SLURM is not installed (Debian: ``apt-get install slurm-wlm munge``) or
    the tests do not run as root."""
    from joint_colsr.ops.slurm_local import LocalCluster, unavailable_reason

    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    cluster = LocalCluster(tmp_path_factory.mktemp("slurm"))
    cluster.start()
    saved = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(cluster.conf)
    try:
        yield cluster
    finally:
        if saved is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = saved
        cluster.stop()


def checkpoint_weights(ckpt: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of a training checkpoint (read by the suite's one checkpoint reader)."""
    from joint_colsr.run.checkpointing import read_checkpoint

    return read_checkpoint(ckpt)["state_dict"]


def assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """Same keys and bit-identical tensors; names the first differing tensors."""
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def assert_resume_from_step_is_exact(compose_cfg, tmp_path: Path, overrides: list[str], step: int, steps: int) -> Path:
    """Train ``overrides`` straight (they keep a ``step<N>.ckpt`` after every step), resume a
    second run from ``step<step>.ckpt``: it ends at ``steps`` global steps with bit-identical
    weights. Returns the straight run's folder."""
    from joint_colsr.train import train

    straight = compose_cfg(overrides)
    train(straight)
    ckpts = Path(straight.paths.output_dir) / "checkpoints"
    resumed = compose_cfg([*overrides, f"ckpt_path={ckpts / f'step{step}.ckpt'}"])
    resumed.paths.output_dir = str(tmp_path / "resumed")
    assert train(resumed)["global_step"] == steps  # no batch repeated, none skipped
    assert_bitwise_equal(checkpoint_weights(ckpts / "last.ckpt"), checkpoint_weights(tmp_path / "resumed" / "checkpoints" / "last.ckpt"))
    return Path(straight.paths.output_dir)


@contextmanager
def folder_locked_elsewhere(folder: Path, message: str = "held by pid {pid}") -> Iterator[None]:
    """``folder``'s lock (:func:`joint_colsr.run.resume.lock_folder`) held by another (forked)
    process while the block runs."""
    import multiprocessing

    from joint_colsr.run.resume import lock_folder

    ready, release = multiprocessing.Event(), multiprocessing.Event()

    def hold() -> None:
        with lock_folder(folder, message):
            ready.set()
            release.wait(120)

    holder = multiprocessing.get_context("fork").Process(target=hold)
    holder.start()
    try:
        assert ready.wait(60), f"the other process never took the lock of {folder}"
        yield
    finally:
        release.set()
        holder.join()
