"""run/outputs.py: atomic files get the umask's mode, like any other program's files."""

from __future__ import annotations

import os
import stat

import pytest

from joint_colsr.run.outputs import atomic_write, write_json


@pytest.mark.parametrize("umask, expected", [(0o002, 0o664), (0o022, 0o644), (0o077, 0o600)])
def test_atomic_files_follow_the_umask(tmp_path, umask, expected):
    old = os.umask(umask)
    try:
        write_json(tmp_path / "metrics.json", {"a": 1})
        with atomic_write(tmp_path / "grid.png", "wb") as handle:
            handle.write(b"png")
    finally:
        os.umask(old)
    for name in ("metrics.json", "grid.png"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == expected, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png", "metrics.json"]  # no temporaries left
