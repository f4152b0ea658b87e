"""tests/stress.py: pytest under added load returns pytest's status and leaves no busy process."""

import os

from . import stress


def _children() -> set[int]:
    path = f"/proc/{os.getpid()}/task/{os.getpid()}/children"
    return set(map(int, open(path).read().split())) if os.path.exists(path) else set()


def test_stress_runs_pytest_under_load_and_stops_the_load(capsys):
    before = _children()
    status = stress.main(["--load", "1", "--", "-q", "-p", "no:cacheprovider", "tests/run/test_outputs.py"])
    assert status == 0
    out = capsys.readouterr().out
    assert f"{stress.usable_cores()} busy processes" in out and "pytest exited 0" in out
    assert _children() <= before  # every busy process was stopped and reaped


def test_stress_returns_pytest_failure_status():
    assert stress.main(["--load", "0", "--", "-q", "-p", "no:cacheprovider", "tests/run/test_outputs.py::no_such_test"]) != 0
