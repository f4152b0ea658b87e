"""Benchmarks: ``python -m joint_colsr.bench`` (``make bench``) writes benchmarks/results.json and RESULTS.md."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from joint_colsr.run.outputs import write_json

log = logging.getLogger(__name__)


def merge_results(out_dir: Path, keys: dict[str, Any], nested: tuple[str, ...] = ("section_runs",)) -> dict[str, Any]:
    """Read-modify-write ``out_dir/results.json``: ``keys`` replace theirs, every other writer's stay.

    The dicts under ``nested`` keys are merged one level down instead (``section_runs``:
    when and where each section was last measured).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "results.json"
    merged: dict[str, Any] = {}
    if path.exists():
        try:
            merged = json.loads(path.read_text())
        except json.JSONDecodeError:
            log.warning("%s is not valid JSON; starting a new one", path)
    for key, value in keys.items():
        if key in nested and isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    write_json(path, merged)
    return merged


def replace_report_section(out_dir: Path, begin: str, end: str, markdown: str, at_top: bool = False) -> Path:
    """Put ``markdown`` between the ``begin``/``end`` markers of ``out_dir/RESULTS.md``.

    An existing section is replaced in place; a new one goes right under the title
    (``at_top``) or at the end. Other writers' sections are left as they are.
    """
    report = out_dir / "RESULTS.md"
    text = report.read_text() if report.exists() else "# Benchmarks\n"
    block = f"{begin}\n{markdown}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    elif at_top:
        title, sep, rest = text.partition("\n")
        text = f"{title}\n\n{block}\n{sep}{rest.lstrip(chr(10))}" if title.startswith("# ") else f"# Benchmarks\n\n{block}\n\n{text}"
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    report.write_text(text if text.endswith("\n") else text + "\n")
    return report
