"""What runs leave behind: files written atomically, metrics as JSON, the summary printed at the end.

Every writer of the suite goes through :func:`atomic_write` (checkpoints, cache shards and
index, sweep summaries, ``metrics.json``), so a reader sees the old file or the new one,
never half of one.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterable, Iterator


def _umask() -> int:
    """The process umask, read without changing it where the OS tells (Linux: /proc)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (no file is created in between)
    os.umask(mask)
    return mask


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", fsync: bool = True) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path`` for writing; on success fsync it and rename it onto ``path``.

    The temporary file lives in the *same folder*: a rename within one filesystem is atomic
    on POSIX (a temp file in the system temp folder, on another filesystem, would be copied,
    and a kill during the copy leaves a truncated file). On an exception the temporary file
    is removed and ``path`` is untouched. The file gets the mode any program's new file gets
    (0666 less the umask), not ``mkstemp``'s private 0600: a group-shared folder stays shared.

    Args:
        path: the file to (re)write; its folder is created if needed.
        mode: ``"w"`` (text) or ``"wb"`` (bytes).
        fsync: flush the data and the rename to disk (durable across a power loss).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    if fsync:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON data: tensors and numpy scalars -> Python numbers, non-finite
    floats -> ``"nan"`` / ``"inf"`` strings (JSON has no NaN), dicts and lists recursively."""
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def write_json(path: str | os.PathLike, data: Any, indent: int | None = 2) -> None:
    """Write ``jsonable(data)`` to ``path`` atomically (sorted keys, trailing newline)."""
    with atomic_write(path) as handle:
        handle.write(json.dumps(jsonable(data), indent=indent, sort_keys=True) + "\n")


def print_run_summary(output_dir: str | os.PathLike, lines: Iterable[str]) -> None:
    """The few lines a command prints when it is done: where its files are, then ``lines``."""
    print(f"Run directory: {output_dir}")
    for line in lines:
        print(line)


#: The suite's commands, by the name of the log Hydra writes into their run directory (``<task>.log``).
COMMANDS = ("train", "eval", "predict", "report", "preprocess", "two_stage", "compare_run")


def run_owner(run_dir: str | os.PathLike) -> str | None:
    """The command whose run directory ``run_dir`` is (``train`` for a folder with
    ``checkpoints/``, else the first ``<command>.log`` found), ``None`` for a new or foreign folder."""
    run_dir = Path(run_dir)
    if (run_dir / "checkpoints").is_dir():
        return "train"
    return next((name for name in COMMANDS if (run_dir / f"{name}.log").is_file()), None)


def refuse_foreign_run_dir(run_dir: str | os.PathLike, command: str, key: str = "hydra.run.dir") -> None:
    """Raise a ``ConfigError`` when ``run_dir`` is another command's run directory: ``command``
    would write its own ``metrics.json``, ``.hydra/`` and log over that run's."""
    owner = run_owner(run_dir)
    if owner is None or owner == command or {owner, command} == {"train", "two_stage"}:
        return
    from joint_colsr.run.config_checks import ConfigError

    raise ConfigError(f"{key}={run_dir} holds a `{owner}` run; `{command}` writes its own files there (metrics.json, .hydra/, "
                      f"its log) and would replace that run's. Leave {key} unset (a new folder) or pick an empty one")
