"""Red-team battery: replay bad inputs, faults and interruptions of issue 16 on tiny CPU runs and
count how each ended.

    python -m tests.red_team            # about 2 minutes on 2 CPU cores; prints the table and the figures

Each case runs the real entry point (``train`` / ``predict``) and is judged:

* ``clear``: a one-line error naming the key or file (``ConfigError``/``ValueError``), or
  the fault handled as documented (checkpoint saved, interrupted run recorded ...);
* ``raw``: any other exception (a traceback where a sentence is due);
* ``silent``: no error, but a wrong result (steps skipped, a change ignored);
* ``lost``: data or work destroyed (a photo overwritten, a record replaced).

``tests/test_red_team.py`` (slow) runs it and requires 0 raw, 0 silent, 0 lost.
"""

from __future__ import annotations

import csv
import json
import shutil
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from joint_colsr.run.checkpointing import CheckpointWriteError
from joint_colsr.run.config_checks import ConfigError
from joint_colsr.run.preemption import TrainingInterrupted

from .conftest import compose_config, folder_locked_elsewhere, random_photo

BASE = ["model.net.width_mult=0.0625", "data.batch_size=2", "data.num_workers=0", "data.train_samples_per_epoch=8",
        "data.val_views=1", "trainer.accelerator=cpu", "trainer.deterministic=true", "trainer.limit_val_batches=1",
        "trainer.max_epochs=1", "callbacks.model_summary.max_depth=0", "callbacks.progress_bar.refresh_rate=0",
        "logger=csv", "seed=7"]


def _train(run_dir: Path, *overrides: str) -> dict:
    from joint_colsr.train import train

    return train(compose_config("train", [*BASE, *overrides], output_dir=run_dir))


def _expect_error(run_dir: Path, *overrides: str) -> str:
    """The case passes only if training refuses with a clear error (raised to the judge)."""
    _train(run_dir, *overrides)
    return "silent"


# -- cases: each returns a verdict or raises (the judge classifies the exception) ------------

def resume_after_checkpoint_on_epoch_last_batch(d: Path) -> str:
    over = ["trainer.max_epochs=2", "callbacks.last_checkpoint.every_n_train_steps=2"]
    _train(d, *over, "trainer.max_steps=4")
    return "clear" if _train(d, *over)["global_step"] == 8 else "silent"


def mid_epoch_resume_with_0_workers(d: Path) -> str:
    over = ["trainer.max_epochs=2", "+callbacks.model_checkpoint.every_n_train_steps=1", "callbacks.model_checkpoint.save_top_k=-1",
            "callbacks.model_checkpoint.monitor=null", "callbacks.model_checkpoint.filename='step{step}'"]
    _train(d / "a", *over)
    steps = _train(d / "b", *over, f"ckpt_path={d / 'a' / 'checkpoints' / 'step2.ckpt'}")["global_step"]
    return "clear" if steps == 8 else "silent"


def sigterm_mid_training(d: Path) -> str:
    try:
        _train(d, "trainer.max_epochs=2", "+callbacks.fault._target_=tests._faults.SignalAt", "+callbacks.fault.step=3")
    except TrainingInterrupted as err:
        saved = json.loads((d / "metrics.json").read_text())
        ok = err.exit_code == 143 and Path(str(err.ckpt_path)).is_file() and saved["status"] == "interrupted"
        return "clear" if ok and _train(d, "trainer.max_epochs=2")["global_step"] == 8 else "lost"
    return "lost"


def sigterm_during_validation(d: Path) -> str:
    try:
        _train(d, "trainer.max_epochs=2", "trainer.limit_val_batches=2", "data.val_views=2",
               "+callbacks.fault._target_=tests._faults.SignalAt", "+callbacks.fault.val_batch=0")
    except TrainingInterrupted:
        done = _train(d, "trainer.max_epochs=2", "trainer.limit_val_batches=2", "data.val_views=2")
        return "clear" if done["global_step"] == 8 else "lost"
    return "lost"


def rerun_of_finished_run(d: Path) -> str:
    _train(d)
    before = {p: p.read_bytes() for p in d.rglob("*") if p.is_file() and ".hydra" not in p.parts}
    _train(d)
    after = {p: p.read_bytes() for p in d.rglob("*") if p.is_file() and ".hydra" not in p.parts}
    return "clear" if before == after else "lost"


def resume_keeps_csv_rows(d: Path) -> str:
    _train(d)
    rows = (d / "csv" / "metrics.csv").read_text()
    _train(d, "trainer.max_epochs=2")
    kept = [p.read_text() for p in (d / "csv").glob("metrics*.csv")]
    return "clear" if rows in kept else "lost"


def resume_keeps_metrics_json(d: Path) -> str:
    _train(d)
    first = json.loads((d / "metrics.json").read_text())
    _train(d, "trainer.max_epochs=2")
    return "clear" if first in json.loads((d / "metrics.json").read_text()).get("attempts", []) else "lost"


def step_checkpoints_keep_epoch_end_save(d: Path) -> str:
    _train(d, "callbacks.last_checkpoint.every_n_train_steps=3")
    step = torch.load(d / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["global_step"]
    return "clear" if step == 4 else "silent"


def raw_weights_survive_in_last_ckpt(d: Path) -> str:
    # EMA on: last.ckpt's current_model_state must be the raw weights, not the average.
    _train(d, "callbacks.last_checkpoint.every_n_train_steps=3")
    state = torch.load(d / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    same = all(torch.equal(state["state_dict"][k], state["current_model_state"][k]) for k in state["state_dict"]
               if state["state_dict"][k].is_floating_point())
    return "silent" if same else "clear"


def resume_with_changed_lr(d: Path) -> str:
    _train(d)
    return _expect_error(d, "trainer.max_epochs=2", "model.optimizer.lr=0.5")


def resume_with_changed_seed(d: Path) -> str:
    _train(d)
    return _expect_error(d, "trainer.max_epochs=2", "seed=8")


def resume_into_another_width(d: Path) -> str:
    _train(d)
    return _expect_error(d, "trainer.max_epochs=2", "model.net.width_mult=0.125")


def corrupt_last_ckpt_with_intact_copy(d: Path) -> str:
    _train(d)
    ckpts = d / "checkpoints"
    shutil.copy(ckpts / "last.ckpt", ckpts / "last-v1.ckpt")
    (ckpts / "last.ckpt").write_bytes(b"\0" * 100)
    return "clear" if _train(d, "trainer.max_epochs=2")["global_step"] == 8 else "silent"


def text_file_as_ckpt_path(d: Path) -> str:
    bad = d / "notes.txt"
    d.mkdir(parents=True, exist_ok=True)
    bad.write_text("hello\n")
    return _expect_error(d / "run", f"ckpt_path={bad}")


def foreign_pickle_as_ckpt_path(d: Path) -> str:
    bad = d / "other.ckpt"
    d.mkdir(parents=True, exist_ok=True)
    torch.save({"weights": torch.ones(2)}, bad)
    return _expect_error(d / "run", f"ckpt_path={bad}")


def lr_not_a_number(d: Path) -> str:
    return _expect_error(d, "model.optimizer.lr=abc")


def reversed_crop_scale(d: Path) -> str:
    return _expect_error(d, "data.crop_scale=[0.9,0.2]")


def negative_samples_per_epoch(d: Path) -> str:
    return _expect_error(d, "data.train_samples_per_epoch=-8")


def ema_typo_key(d: Path) -> str:
    return _expect_error(d, "+callbacks.ema.decya=0.5")


def second_process_in_run_dir(d: Path) -> str:
    with folder_locked_elsewhere(d):
        return _expect_error(d)


def _photos(d: Path) -> Path:
    rng = np.random.default_rng(0)
    inputs = d / "in"
    inputs.mkdir(parents=True)
    for name in ("a.png", "a.jpg", "a.JPEG"):
        Image.fromarray(random_photo(rng, 40, 40)).save(inputs / name, format="PNG" if name.endswith("png") else "JPEG")
    return inputs


def _predict(inputs: Path, out: Path) -> dict:
    from joint_colsr.predict import predict

    cfg = compose_config("predict", ["baseline=bicubic", f"input_dir={inputs}", f"output_dir={out}", "device=cpu"],
                         output_dir=inputs.parent / "run")
    return predict(cfg)


def predict_into_input_dir(d: Path) -> str:
    inputs = _photos(d)
    before = (inputs / "a.png").read_bytes()
    try:
        _predict(inputs, inputs)
    except ConfigError:
        return "clear" if (inputs / "a.png").read_bytes() == before else "lost"
    return "lost"


def predict_colliding_stems(d: Path) -> str:
    inputs = _photos(d)
    result = _predict(inputs, d / "out")
    return "clear" if result["written"] == len(list((d / "out").iterdir())) == 3 else "lost"


def _folder(root: Path, n: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    for i in range(n):
        sub = root / ("a" if i % 2 else "b")
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(random_photo(rng, 120, 160)).save(sub / f"img{i}.png")
    return root


def cache_built_from_another_folder(d: Path) -> str:
    from joint_colsr.data.cache import CacheError
    from joint_colsr.preprocess import preprocess

    a, b = _folder(d / "A", 8, 0), _folder(d / "B", 6, 1)
    preprocess(compose_config("preprocess", ["data=folder", f"data.root={a}", f"cache_dir={d / 'cache'}", "progress=false",
                                             "data.num_workers=0"], output_dir=d / "pre"))
    try:
        _train(d / "run", "data=folder", f"data.root={b}", f"data.cache={d / 'cache'}")
    except CacheError as err:  # a sentence naming the cache and what to do
        return "clear" if "rebuild the cache" in str(err) else "raw"
    return "silent"


def symlinked_subfolders(d: Path) -> str:
    from joint_colsr.data.sources import ImageFolder

    real = _folder(d / "real", 8, 2)
    linked = d / "linked"
    linked.mkdir()
    for child in real.iterdir():
        (linked / child.name).symlink_to(child, target_is_directory=True)
    return "clear" if len(ImageFolder(str(linked)).items()) == 8 else "silent"


def _folder_validating_on_grayscale(root: Path, n: int) -> Path:
    """``n`` colour photos; the one the split validates on (lowest path hash) is grayscale."""
    from joint_colsr.data.sources import _stable_fraction

    rng = np.random.default_rng(4)
    root.mkdir(parents=True)
    names = [f"img{i}.png" for i in range(n)]
    for name in names:
        Image.fromarray(random_photo(rng, 120, 160)).save(root / name)
    gray = root / min(names, key=_stable_fraction)
    Image.open(gray).convert("L").save(gray)
    return gray


def only_validation_photo_unusable(d: Path) -> str:
    _folder_validating_on_grayscale(d / "photos", 5)
    _train(d / "run", "data=folder", f"data.root={d / 'photos'}", "data.source.val_fraction=0.01")
    with open(d / "run" / "csv" / "metrics.csv") as f:  # validated on a usable photo, none skipped
        validated = any(row.get("val/psnr") for row in csv.DictReader(f))
    return "clear" if validated else "silent"


def no_usable_validation_photo(d: Path) -> str:
    gray = _folder_validating_on_grayscale(d / "photos", 2)
    try:
        _train(d / "run", "data=folder", f"data.root={d / 'photos'}", "data.source.val_fraction=0.01")
    except Exception as err:  # noqa: BLE001 - judged on its message: the file, the reason and the fix
        text = str(err)
        return "clear" if str(gray) in text and "grayscale" in text and "data.exclude_grayscale=false" in text else "raw"
    return "silent"


def second_preprocess_into_one_cache(d: Path) -> str:
    from joint_colsr.data.cache import build_cache
    from joint_colsr.data.sources import ImageFolder
    source = ImageFolder(str(_folder(d / "photos", 4, 3)))
    with folder_locked_elsewhere(d / "cache"):  # the first process, mid-build
        build_cache(source, d / "cache", output_size=32, progress=False)
    return "silent"


def disk_full_while_checkpointing(d: Path) -> str:
    real_save = torch.save

    def full(obj, f, *args, **kwargs):  # what torch raises when the disk fills during a write
        f.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0")

    torch.save = full
    try:
        _train(d)
    finally:
        torch.save = real_save
    return "silent"


CASES: list[Callable[[Path], str]] = [
    cache_built_from_another_folder, symlinked_subfolders, second_preprocess_into_one_cache, disk_full_while_checkpointing,
    resume_after_checkpoint_on_epoch_last_batch, mid_epoch_resume_with_0_workers, sigterm_mid_training,
    sigterm_during_validation, rerun_of_finished_run, resume_keeps_csv_rows, resume_keeps_metrics_json,
    step_checkpoints_keep_epoch_end_save, raw_weights_survive_in_last_ckpt, resume_with_changed_lr,
    resume_with_changed_seed, resume_into_another_width, corrupt_last_ckpt_with_intact_copy, text_file_as_ckpt_path,
    foreign_pickle_as_ckpt_path, lr_not_a_number, reversed_crop_scale, negative_samples_per_epoch, ema_typo_key,
    second_process_in_run_dir, predict_into_input_dir, predict_colliding_stems, only_validation_photo_unusable,
    no_usable_validation_photo,
]


def judge(case: Callable[[Path], str], workdir: Path) -> tuple[str, str]:
    """(verdict, detail) of one case."""
    try:
        verdict = case(workdir)
        return verdict, ""
    except (ConfigError, ValueError, CheckpointWriteError) as err:
        message = str(err)
        return ("clear", message.splitlines()[0][:160]) if message and "\n" not in message.strip() else ("raw", message[:160])
    except Exception as err:  # noqa: BLE001 - every other exception is a raw traceback
        return "raw", "".join(traceback.format_exception_only(type(err), err)).strip()[:160]


def run_battery() -> dict[str, int]:
    """Run every case in a temporary folder; print one line per case and the figures."""
    counts = {"tried": 0, "clear": 0, "raw": 0, "silent": 0, "lost": 0}
    with tempfile.TemporaryDirectory(prefix="red_team_") as tmp:
        for case in CASES:
            verdict, detail = judge(case, Path(tmp) / case.__name__)
            counts["tried"] += 1
            counts[verdict] += 1
            print(f"{verdict:7s} {case.__name__}{': ' + detail if detail else ''}", flush=True)
    print("tried {tried} | clear error or handled {clear} | raw traceback {raw} | silent {silent} | lost {lost}".format(**counts))
    return counts


if __name__ == "__main__":
    import logging

    logging.disable(logging.WARNING)
    result = run_battery()
    sys.exit(0 if result["raw"] == result["silent"] == result["lost"] == 0 else 1)
