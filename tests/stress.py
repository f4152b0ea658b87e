"""Run pytest while busy processes load every core: the proof that the suite does not depend on
free cores or on the scheduler's timing (``make test-stress``).

    python -m tests.stress --load 8 -- -n 2 --dist loadfile -q tests/run

``--load N`` starts N busy-looping processes per usable core, at the tests' own priority, for
as long as pytest runs, and sets ``JOINT_COLSR_TEST_SLOWDOWN`` to N + 1 so that the suite's
hang bounds (``tests.conftest.hang_bound``) stretch with the machine's slowness. Everything
after ``--`` goes to pytest. The exit status is pytest's; the busy processes are stopped
however pytest ends (Ctrl-C included). The load average is printed at the start and the end,
so the log shows the load the suite passed under.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

BUSY = "while True:\n    pass\n"


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.stress", description=__doc__.split("\n\n")[0])
    parser.add_argument("--load", type=float, default=8.0, help="busy processes per usable core (default 8)")
    parser.add_argument("pytest_args", nargs=argparse.REMAINDER, help="arguments for pytest, after --")
    args = parser.parse_args(argv)
    if args.load < 0:
        parser.error(f"--load must be >= 0, got {args.load}")
    pytest_args = args.pytest_args[1:] if args.pytest_args[:1] == ["--"] else args.pytest_args
    cores = usable_cores()
    count = round(args.load * cores)
    env = {**os.environ, "JOINT_COLSR_TEST_SLOWDOWN": str(args.load + 1)}
    busy = [subprocess.Popen([sys.executable, "-c", BUSY], stdin=subprocess.DEVNULL) for _ in range(count)]
    start = time.monotonic()
    print(f"stress: {count} busy processes on {cores} usable cores (load x{args.load:g}); "
          f"load average now {os.getloadavg()[0]:.1f}; hang bounds x{args.load + 1:g}", flush=True)
    pytest = None
    try:
        pytest = subprocess.Popen([sys.executable, "-m", "pytest", *pytest_args], env=env)
        status = pytest.wait()
    except KeyboardInterrupt:
        if pytest is not None:
            pytest.send_signal(signal.SIGINT)
            pytest.wait()
        status = 130
    finally:
        load = os.getloadavg()
        for proc in busy:
            proc.kill()
        for proc in busy:
            proc.wait()
    print(f"stress: pytest exited {status} after {time.monotonic() - start:.0f} s; load average at the end "
          f"{load[0]:.1f} (1 min), {load[1]:.1f} (5 min), {load[2]:.1f} (15 min) on {cores} cores", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
