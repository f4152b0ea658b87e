"""The COCO start-up benchmark at tiny scale: it runs each start in its own process and writes its keys.

No timing is asserted: the numbers belong to ``make bench``.
"""

import json

import pytest

from joint_colsr.bench.coco_startup import (
    REPORT_BEGIN,
    REPORT_END,
    run_coco_startup_benchmark,
    write_results,
)


@pytest.mark.slow
def test_startup_benchmark_measures_each_start_and_writes_only_its_keys(tmp_path):
    result = run_coco_startup_benchmark(scale=(200, 20), work_dir=tmp_path, ranks=3)
    starts = result["starts"]
    assert starts["pycocotools"]["counts"] == {"train": 200}
    held_out = 20  # a tenth of train2017 at this scale
    for name in ("first_start", "second_start"):
        assert starts[name]["counts"] == {"train": 200 - held_out, "val": held_out, "categories": 80}
    assert starts["eval_first_start"]["counts"] == starts["eval_start"]["counts"] == {"val": 20, "categories": 80}
    for s in starts.values():
        assert s["seconds"] > 0 and s["cpu_seconds"] >= 0 and s["peak_above_imports_bytes"] >= 0 and s["imports_rss_bytes"] > 0
    # training parses train2017 alone (held-out validation), eval val2017 alone; second starts parse nothing
    assert [starts[n]["indexes_parsed"] for n in ("first_start", "second_start", "eval_first_start", "eval_start")] == [1, 0, 1, 0]
    together = result["first_start_ranks_at_once"]
    assert together["ranks"] == 3 and together["indexes_parsed"] == 1  # one rank parsed, the others read its index
    assert result["index_bytes"] > 0 and result["coco_second_start_seconds"] == round(starts["second_start"]["seconds"], 3)
    assert not list(tmp_path.iterdir())  # the temporary layout is gone

    out = tmp_path / "benchmarks"
    out.mkdir()
    (out / "results.json").write_text(json.dumps({"models": {"x": 1}}))
    write_results(result, out)
    write_results(result, out)  # a rerun replaces, never appends
    written = json.loads((out / "results.json").read_text())
    assert written["models"] == {"x": 1} and written["coco_second_start_peak_gib"] == result["coco_second_start_peak_gib"]
    assert written["coco_startup"]["starts"]["eval_start"]["counts"]["val"] == 20
    report = (out / "RESULTS.md").read_text()
    assert report.count(REPORT_BEGIN) == report.count(REPORT_END) == 1 and "| **second start**" in report
