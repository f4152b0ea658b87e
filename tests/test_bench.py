"""The benchmark suite runs and writes a valid results.json; its pieces do what they say.

No timing is asserted anywhere: numbers belong to ``make bench`` and benchmarks/RESULTS.md.
"""

import importlib.util
import json
import math

import pytest
import torch

from joint_colsr.assembly import build_datamodule, build_system
from joint_colsr.bench.__main__ import OWN_KEYS, main
from joint_colsr.bench.loop import (
    CycledBatches,
    block_seconds,
    cycled_loader,
    ema_callback_config,
    make_uint8_batches,
    raw_loop_timed,
    summarize,
)
from joint_colsr.bench.models import FAST_PATHS, compose_train_config, model_names

from .conftest import CONF_DIR


def _positive(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_model_names_are_every_model_config():
    assert model_names() == sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
    assert "joint_paper" in model_names()


def test_width_override_reaches_every_width_key():
    cfg = compose_train_config(["trainer=cpu"], width_mult=0.125)
    assert cfg.model.net.width_mult == 0.125
    assert compose_train_config(["trainer=cpu"]).model.net.width_mult == 1.0


def test_block_seconds_and_summary():
    assert block_seconds([1, 3, 2, 2, 9], 2) == [2.0, 2.0]
    s = summarize([1.0, 2.0, 4.0], images_per_step=8)
    assert s["seconds_per_step"] == 2.0 and s["images_per_s"] == 4.0 and s["spread"] == 1.5
    with pytest.raises(ValueError):
        summarize([], 1)


def test_cycled_batches_repeat_the_premade_ones():
    batches = [{"x": torch.tensor([i])} for i in range(3)]
    assert len(CycledBatches(batches, 7)) == 7
    assert [int(b["x"]) for b in cycled_loader(batches, 5)] == [0, 1, 2, 0, 1]


def test_raw_loop_trains_the_network():
    cfg = compose_train_config(["trainer=cpu", "data.val_views=1"], width_mult=0.0625)
    batches = make_uint8_batches(cfg, batch_size=2, count=2)
    assert batches[0]["rgb"].shape == (2, 3, 256, 256) and batches[0]["rgb"].dtype == torch.uint8
    net = build_system(cfg).net
    before = [p.detach().clone() for p in net.parameters()]
    wall, cpu = raw_loop_timed(cfg, net, batches, warmup=1, steps=2, convert=build_datamodule(cfg).on_after_batch_transfer)
    assert len(wall) == len(cpu) == 2
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))


@pytest.mark.slow
def test_quick_bench_writes_results_and_keeps_other_writers_keys(tmp_path):
    out = tmp_path / "benchmarks"
    out.mkdir()
    (out / "results.json").write_text(json.dumps({"written_by_someone_else": {"x": 1}}))
    (out / "RESULTS.md").write_text("# Benchmarks\n\n<!-- BEGIN other -->\nkept\n<!-- END other -->\n")
    main(["--quick", "--out", str(out)])
    results = json.loads((out / "results.json").read_text())
    assert results["written_by_someone_else"] == {"x": 1}
    assert set(OWN_KEYS) <= set(results)
    assert results["machine"]["cpu_model"] and results["machine"]["torch"] == torch.__version__
    assert results["bench_settings"]["quick"] is True

    for name in model_names():
        entry = results["models"][name]
        assert "error" in entry or _positive(entry["forward_flops_per_image"])
    paper = results["models"]["joint_paper"]
    assert _positive(paper["train_step_flops_per_image"]) and paper["train_step_flops_per_image"] > paper["forward_flops_per_image"]
    for per_batch in paper["batch_sizes"].values():
        for kind in ("train", "inference"):
            assert _positive(per_batch[kind]["images_per_s"]) and _positive(per_batch[kind]["achieved_flop_per_s"])

    assert _positive(results["lightning_vs_raw_loop"])
    assert results["lightning_vs_raw_loop"] == results["lightning_vs_raw_loop_detail"]["lightning"]["ratio"]
    options = results["fast_paths"]["options"]
    assert set(options) == set(FAST_PATHS)
    assert _positive(options["baseline"]["speedup_vs_baseline"])
    assert "skipped" in options["compile"]  # --quick does not compile

    assert _positive(results["paper_schedule"]["projected_hours"])
    assert results["paper_schedule"]["images"] * results["paper_schedule"]["epochs"] == 118_287 * 148
    if importlib.util.find_spec("joint_colsr.bench.data") is None:
        assert results["bench_settings"]["data_benchmark"].startswith("not available")
    else:  # the data benchmark wrote its own key and section
        assert results["bench_settings"]["data_benchmark"].startswith("ran")
        assert _positive(results["data_cache_vs_naive"])

    assert results["bench_settings"]["coco_startup_benchmark"].startswith("ran")  # its own keys and section
    assert _positive(results["coco_second_start_seconds"]) and "## COCO start-up" in (out / "RESULTS.md").read_text()

    main(["--quick", "--out", str(out), "--sections", "projection"])  # a rerun replaces our part only
    rerun = json.loads((out / "results.json").read_text())
    assert rerun["models"] == results["models"] and rerun["written_by_someone_else"] == {"x": 1}
    md = (out / "RESULTS.md").read_text()
    assert md.startswith("# Benchmarks") and md.count("<!-- BEGIN model benchmark") == 1
    for heading in ("## The paper's schedule", "## Lightning training step vs a raw PyTorch loop", "## Fast paths", "## Model variants"):
        assert heading in md
    assert results["machine"]["cpu_model"] in md
    # The header says which sections this run measured and which numbers are older.
    assert set(rerun["section_runs"]) == {"models", "lightning", "fast_paths", "projection", "data", "coco_startup"}
    assert rerun["section_runs"]["projection"]["run"] != rerun["section_runs"]["models"]["run"]
    older = next(line for line in md.splitlines() if line.startswith("- The last run measured: projection."))
    assert "fast_paths (" in older and "models (" in older and "projection (" not in older
    assert md.index("| baseline |") < md.index("| all |")  # fast paths in FAST_PATHS order, not alphabetical
    assert "<!-- BEGIN other -->\nkept\n<!-- END other -->" in md


def test_raw_loop_mirrors_the_configured_weight_averaging():
    cfg = compose_train_config(["trainer=cpu", "callbacks=ema", "callbacks.ema.decay=0.5"], width_mult=0.0625)
    ema = ema_callback_config(cfg)
    assert ema is not None and ema.decay == 0.5
    assert ema_callback_config(compose_train_config(["trainer=cpu", "callbacks=default"])) is None
    batches = make_uint8_batches(cfg, batch_size=2, count=1)
    wall, _ = raw_loop_timed(cfg, build_system(cfg).net, batches, warmup=0, steps=2, convert=build_datamodule(cfg).on_after_batch_transfer)
    assert len(wall) == 2


def test_out_of_memory_keeps_smaller_batches_and_skips_larger(monkeypatch):
    from joint_colsr.bench import models as bench_models

    real_fit = bench_models.lightning_fit_timed

    def fit_that_runs_out_of_memory_above_two(cfg, system, warmup, steps, batches, **kwargs):
        if batches[0]["rgb"].shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real_fit(cfg, system, warmup, steps, batches=batches, **kwargs)

    monkeypatch.setattr(bench_models, "lightning_fit_timed", fit_that_runs_out_of_memory_above_two)
    result = bench_models.benchmark_variant("joint_paper", ["trainer=cpu", "data.num_workers=0", "data.val_views=1"], 0.0625,
                                            [2, 4, 8], warmup=1, steps=1, max_seconds=5.0)
    assert list(result["batch_sizes"]) == ["2", "4"]  # 8 is not tried after 4 ran out of memory
    assert _positive(result["batch_sizes"]["2"]["train"]["images_per_s"])
    assert result["batch_sizes"]["4"] == {"error": "out of memory at batch 4"}


def test_compare_tiny_times_the_readmes_tiny_form_and_names_a_failed_run(tmp_path):
    from joint_colsr.bench.compare_tiny import TINY_FORM, timed_compare

    readme = (CONF_DIR.parent / "README.md").read_text()
    assert "python -m joint_colsr.compare " + " ".join(TINY_FORM[:6]) in " ".join(readme.replace("\\\n", " ").split())  # the form it times
    with pytest.raises(SystemExit, match=r"(?s)compare failed \(exit 2\).*argument --match: invalid choice"):
        timed_compare(tmp_path / "cmp", "--match", "nonsense")
