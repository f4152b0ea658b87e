"""The progress bar's formatting (the training-run callbacks are exercised end to end in test_train)."""

from lightning.pytorch.callbacks import TQDMProgressBar

from joint_colsr.run.callbacks import ProgressBar


def test_progress_bar_prints_psnr_to_two_decimals_like_the_summary_and_checkpoint_names(monkeypatch):
    # tqdm's default 3 significant digits would show 21.3349 as 21.3, and 9.5 stays 9.50.
    monkeypatch.setattr(TQDMProgressBar, "get_metrics",
                        lambda self, trainer, module: {"val/psnr": 21.3349, "val/psnr_joint": 9.5, "v_num": 3, "lr": 0.00012345})
    bar = ProgressBar(keys=("train/loss",))
    bar._shown = {"train/loss": 0.0123456}
    shown = bar.get_metrics(None, None)
    assert shown["val/psnr"] == "21.33" and shown["val/psnr_joint"] == "9.50"
    assert shown["v_num"] == 3 and shown["lr"] == 0.00012345  # other values as Lightning shows them
    assert shown["train/loss"] == "0.01235"
