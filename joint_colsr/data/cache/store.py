"""Reading a cache of decoded reference images: memory-mapped uint8 shards plus an index.

Decoding a COCO JPEG and resizing it costs ~10 ms of a CPU core; reading the same
256x256 image from a memory-mapped shard costs ~0.1 ms. ``python -m joint_colsr.preprocess``
builds the cache once; ``data.cache=DIR`` makes :class:`ColSRDataModule` read it, so no
epoch decodes a JPEG.

Layout of ``DIR`` (format version 2)::

    index.json            written once per build: meta (source description, sizes, filters,
                          the validation views stored), per split the number of photos the
                          source lists, categories, and the files the source skipped at
                          start-up (path -> reason)
    shards.jsonl          one line per finished shard, appended: split, file, item range,
                          kept keys and labels, excluded files with reasons, byte size, sha256
    train-00000.npy ...   (n, 3, T, T) uint8, channels first (the layout a batch has)
    val-00000.npy ...     (n * V, 3, S, S) uint8: V views per photo, S = data.output_size

What is stored: validation photo ``p`` is stored as its ``V`` validation views (``V``:
``preprocess val_views``; rows ``p*V .. p*V+V-1``), each made exactly as the file path
makes it (:data:`~joint_colsr.data.views.VALIDATION_VIEWS` ``k``: the view's box of the
original photo, resized to S x S, antialiased bicubic; view 0 is the whole photo, the
evaluation protocol's image). The training split holds the whole photo squash-resized to
T x T (``train_size``, default S). Training augmentation then works on the cached image:
at T = S a random horizontal flip only (no resampling, so no blur enters the
super-resolution target); at T > S a random resized crop (``data.crop_scale``) resized
down to S, plus the flip.

Opening verifies structure (every shard present, its .npy header and byte size as
indexed) and contents: ``verify="quick"`` (the default) checks each shard's sha256 the first
time it is opened and again whenever its file changed (``verified.json`` remembers size,
mtime and inode); ``verify="full"`` checks every shard's sha256 on every open. Photos excluded at build
time (see :mod:`.build`) and files the source skipped at start-up are listed in the
index with their reasons.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from joint_colsr.data.decode import count_reasons
from joint_colsr.data.sources import ImageSource
from joint_colsr.data.views import WHOLE, Box
from joint_colsr.run.outputs import atomic_write

log = logging.getLogger(__name__)

CACHE_VERSION = 2
INDEX_NAME = "index.json"
SHARDS_NAME = "shards.jsonl"
#: Shards whose sha256 was checked, with the size, mtime and inode they had then (``verify="quick"``).
VERIFIED_NAME = "verified.json"
SPLITS = ("train", "val")

BUILD_HELP = "build it with: python -m joint_colsr.preprocess data=<source> [data.root=DIR] cache_dir=DIR"

#: How decoding treats colour profiles; a cache built before it converted them lacks the key.
COLOUR_HANDLING = "embedded ICC profiles converted to sRGB (LittleCMS, relative colorimetric)"


class CacheError(RuntimeError):
    """A cache that cannot be read as asked; the message names the folder and what to do."""


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 4 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def read_shard_lines(path: Path) -> tuple[list[dict[str, Any]], int, int | None]:
    """The shard entries of ``shards.jsonl``: ``(entries, intact_bytes, bad_line)``.

    Reading stops at the first line that is not a whole JSON object: a torn last line
    (a build killed while appending) or a damaged one. ``intact_bytes`` is the length of
    the readable prefix; ``bad_line`` the 1-based number of the first unreadable line that
    is *not* a torn last line (``None`` when there is none).
    """
    if not path.is_file():
        return [], 0, None
    data = path.read_bytes()
    entries: list[dict[str, Any]] = []
    intact = 0
    lines = data.split(b"\n")
    for number, line in enumerate(lines, start=1):
        last = number == len(lines)
        if last and not line:  # the file ends with a newline, as every finished append does
            break
        try:
            if last:  # no newline after it: the append was cut short
                raise ValueError("torn")
            entry = json.loads(line)
            if not isinstance(entry, dict):
                raise ValueError("not an object")
        except ValueError:
            return entries, intact, None if last else number
        entries.append(entry)
        intact += len(line) + 1
    return entries, intact, None


def read_index(cache_dir: str | os.PathLike) -> dict[str, Any]:
    """The whole index of a cache (format version 2): ``index.json``'s meta plus, per split,
    ``{"num_items", "shards": [...] (in item order), "complete"}``.

    Raises:
        CacheError: no index, unreadable, another format version (with the rebuild command),
            or a damaged shard line.
    """
    root = Path(cache_dir).expanduser().resolve()
    index_path = root / INDEX_NAME
    if not index_path.is_file():
        raise CacheError(f"data.cache={str(cache_dir)!r}: no {INDEX_NAME} in {root}; {BUILD_HELP}")
    try:
        index = json.loads(index_path.read_text())
    except json.JSONDecodeError as err:
        raise CacheError(f"data.cache={str(cache_dir)!r}: {index_path} is not valid JSON ({err}); {BUILD_HELP}") from None
    if index.get("version") != CACHE_VERSION:
        raise CacheError(
            f"data.cache={str(cache_dir)!r}: cache format version {index.get('version')} (an older joint_colsr), this code "
            f"reads version {CACHE_VERSION}; rebuild it: python -m joint_colsr.preprocess data=<source> [data.root=DIR] "
            f"cache_dir={root} overwrite=true"
        )
    entries, _, bad_line = read_shard_lines(root / SHARDS_NAME)
    if bad_line is not None:
        raise CacheError(f"cache {root}: line {bad_line} of {SHARDS_NAME} is damaged; rerun the preprocess command: "
                         "it rebuilds the shards from there on")
    splits = {}
    for name, entry in index.get("splits", {}).items():
        shards = sorted((e for e in entries if e.get("split") == name), key=lambda e: e["first_item"])
        done = sum(s["num_items"] for s in shards)
        splits[name] = {"num_items": entry["num_items"], "shards": shards, "complete": done == entry["num_items"]}
    return {**index, "splits": splits}


class CacheSplit:
    """One split of an opened cache: ``len()`` photos, ``image(i, view)`` -> ``(3, T, T)`` uint8.

    A photo is stored as ``views`` images (``len(view_boxes)``; 1 for training, the
    validation views for validation): photo ``i``'s view ``k`` is row ``i * views + k``.
    Shards are memory-mapped on first access in each process (DataLoader workers reopen
    them instead of receiving pickled maps).
    """

    def __init__(self, root: Path, name: str, shards: list[dict[str, Any]], size: int,
                 view_boxes: Sequence[Box] = (WHOLE,)) -> None:
        self.root = root
        self.name = name
        self.size = size
        self.view_boxes = tuple(tuple(b) for b in view_boxes)
        self.views = len(self.view_boxes)
        self.files = [s["file"] for s in shards]
        counts = [s["count"] * self.views for s in shards]
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.keys = [k for s in shards for k in s["keys"]]
        self.labels = [tuple(lab) for s in shards for lab in s["labels"]]
        self.excluded = {p: r for s in shards for p, r in s["excluded"].items()}
        self._maps: list[np.ndarray | None] = [None] * len(self.files)

    def __len__(self) -> int:
        return int(self.offsets[-1]) // self.views

    def _map(self, shard: int) -> np.ndarray:
        arr = self._maps[shard]
        if arr is None:
            # A plain ndarray view of the map: np.memmap's Python-level __getitem__ costs more than the copy.
            arr = self._maps[shard] = np.asarray(np.load(self.root / self.files[shard], mmap_mode="r"))
        return arr

    def image(self, i: int, view: int = 0) -> np.ndarray:
        row = i * self.views + view
        shard = int(np.searchsorted(self.offsets, row, side="right")) - 1
        return self._map(shard)[row - self.offsets[shard]]

    def gather(self, photos: np.ndarray, out: np.ndarray) -> None:
        """Copy images ``photos`` (view 0 of each) into ``out[: len(photos)]`` (``(n, 3, T, T)``
        uint8), one copy each, straight from the memory maps.

        A plain per-image assignment: numpy copies each 196 KB image with the GIL released,
        so a gathering thread overlaps the training step (``np.take(..., axis=0, out=...)``
        copied at under half the speed on the project's VM).
        """
        photos = np.asarray(photos, np.int64)
        if len(photos) and (photos.min() < 0 or photos.max() >= len(self)):
            raise IndexError(f"cache split '{self.name}': photo indices must be in [0, {len(self)})")
        rows = photos * self.views
        shards = np.searchsorted(self.offsets, rows, side="right") - 1
        for i, (shard, j) in enumerate(zip(shards.tolist(), (rows - self.offsets[shards]).tolist())):
            out[i] = self._map(shard)[j]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_maps"] = [None] * len(self.files)
        return state


class ImageCache:
    """An opened, verified cache (see the module docstring).

    Use :meth:`open`; ``splits["train"]`` and ``splits["val"]`` are :class:`CacheSplit`.
    """

    def __init__(self, root: Path, index: dict[str, Any], splits: dict[str, CacheSplit]) -> None:
        self.root = root
        self.index = index
        self.splits = splits

    @property
    def output_size(self) -> int:
        return int(self.index["output_size"])

    @property
    def categories(self) -> dict[int, dict[str, str]]:
        return {int(k): v for k, v in self.index.get("categories", {}).items()}

    @property
    def skipped_at_start(self) -> dict[str, str]:
        """Files the source passed over at start-up (path -> reason), whichever split they would have joined."""
        return dict(self.index.get("skipped_at_start", {}))

    @classmethod
    def open(cls, cache_dir: str | os.PathLike, verify: str = "quick", splits: Sequence[str] = SPLITS) -> "ImageCache":
        """Open and verify a cache.

        Args:
            verify: ``"quick"`` (every shard present, .npy header and byte size as indexed,
                and each shard's sha256 once, again when its file changed), ``"full"``
                (every shard's sha256 on every open: reads every byte), or ``"none"``.
            splits: the splits that must be complete.

        Raises:
            CacheError: missing, incomplete, from another version, or damaged; the message
                says which file and how to rebuild.
        """
        if verify not in ("quick", "full", "none"):
            raise ValueError(f"data.cache_verify must be quick, full or none, got {verify!r}")
        root = Path(cache_dir).expanduser().resolve()
        index = read_index(cache_dir)
        if index.get("colour") != COLOUR_HANDLING:
            log.warning("data.cache=%s was built before embedded colour profiles were converted to sRGB: photos tagged "
                        "Adobe RGB, Display P3 or CMYK profiles hold their stored values; rebuild it (preprocess ... "
                        "overwrite=true) for exact colours", cache_dir)
        opened = {}
        for name in splits:
            entry = index["splits"].get(name)
            if entry is None or not entry["complete"]:
                done = sum(s["num_items"] for s in entry["shards"]) if entry else 0
                total = entry["num_items"] if entry else "?"
                raise CacheError(
                    f"data.cache={cache_dir!r}: split '{name}' is incomplete ({done} of {total} photos); "
                    "rerun the same preprocess command to resume it"
                )
            size = int(index["sizes"][name])
            view_boxes = index["val_views"] if name == "val" else (WHOLE,)
            for shard in entry["shards"] if verify != "none" else ():
                _verify_shard(root, shard, size, len(view_boxes), full=verify == "full")
            if verify == "quick":
                _verify_contents_once(root, entry["shards"])
            opened[name] = CacheSplit(root, name, entry["shards"], size, view_boxes)
        cache = cls(root, index, opened)
        for name, split in opened.items():
            reasons = count_reasons(split.excluded.values())
            log.info("cache %s: %s: %d photos; excluded at build: %d (%s)", root, name, len(split),
                     len(split.excluded), ", ".join(f"{n} {r}" for r, n in reasons.most_common()) or "none")
        if cache.skipped_at_start:
            log.info("cache %s: the source skipped %d files at start-up", root, len(cache.skipped_at_start))
        return cache

    def check_matches(self, source: ImageSource | None, output_size: int) -> None:
        """Fail unless this cache was built from ``source`` (same description) at ``output_size``.

        ``source=None`` (training from the cache alone, no ``data.root``) checks the size only.
        """
        if self.output_size != output_size:
            raise CacheError(f"data.cache={self.root} holds {self.output_size}x{self.output_size} images, "
                             f"data.output_size={output_size}; rebuild the cache or set data.output_size={self.output_size}")
        if source is None:
            return
        built, now = self.index["source"], source.describe()
        if built != now:
            raise CacheError(f"data.cache={self.root} was built from source {built}, the data config describes {now}; "
                             "use the same data config (e.g. data.categories, data.max_images) or rebuild the cache")

    def excluded_summary(self) -> dict[str, int]:
        """Reason -> number of photos left out: excluded at build time from the opened splits,
        plus the files the source skipped at start-up (they belong to no split)."""
        reasons = [r for s in self.splits.values() for r in s.excluded.values()]
        return {str(k): n for k, n in count_reasons(reasons + list(self.skipped_at_start.values())).items()}


def _verify_shard(root: Path, shard: dict[str, Any], size: int, views: int, full: bool) -> None:
    path = root / shard["file"]
    if not path.is_file():
        raise CacheError(f"cache {root}: shard {path.name} is missing; rerun the preprocess command to rebuild it")
    if path.stat().st_size != shard["bytes"]:
        raise CacheError(f"cache {root}: shard {path.name} has {path.stat().st_size} bytes, the index says {shard['bytes']}; "
                         "it is damaged: delete it and rerun the preprocess command")
    try:
        arr = np.load(path, mmap_mode="r")
    except Exception as err:  # noqa: BLE001 - a damaged header raises ValueError, SyntaxError, TokenError ...
        raise CacheError(f"cache {root}: shard {path.name} is not a readable .npy file (its header is damaged: "
                         f"{type(err).__name__}); delete it and rerun the preprocess command to rebuild it") from None
    expected = (shard["count"] * views, 3, size, size)
    if arr.dtype != np.uint8 or arr.shape != expected:
        raise CacheError(f"cache {root}: shard {path.name} holds {arr.dtype} {arr.shape}, expected uint8 {expected}")
    if full and sha256_of(path) != shard["sha256"]:
        raise CacheError(f"cache {root}: shard {path.name} fails its sha256 check; delete it and rerun the preprocess command")


def _stat_key(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _verify_contents_once(root: Path, shards: list[dict[str, Any]]) -> None:
    """``verify="quick"``: each shard's sha256 is checked the first time the shard is opened,
    then remembered in ``DIR/verified.json`` with its size, mtime and inode; a shard whose
    file changed since (rewritten, bytes flipped by a write, replaced) is checked again. A
    read-only cache cannot remember: it is checked on every open (logged once)."""
    stamps_path = root / VERIFIED_NAME
    try:
        stamps = json.loads(stamps_path.read_text()) if stamps_path.is_file() else {}
    except (OSError, ValueError):
        stamps = {}  # a damaged stamp file only costs a re-check
    changed = False
    for shard in shards:
        path = root / shard["file"]
        key = _stat_key(path)
        if stamps.get(shard["file"]) == {"stat": key, "sha256": shard["sha256"]}:
            continue
        if sha256_of(path) != shard["sha256"]:
            raise CacheError(f"cache {root}: shard {path.name} fails its sha256 check (its bytes changed after the build); "
                             "delete it and rerun the preprocess command to rebuild it")
        stamps[shard["file"]] = {"stat": key, "sha256": shard["sha256"]}
        changed = True
    if changed:
        try:
            with atomic_write(stamps_path) as f:
                json.dump(stamps, f, sort_keys=True)
        except OSError as err:
            log.info("cache %s: cannot record the verified shards (%s): the next open checks them again", root, err.strerror)


def summarize(index: dict[str, Any]) -> str:
    """One line per split (photos kept, excluded with reasons, shards), and one for the
    files the source skipped at start-up."""
    lines = []
    for name, entry in index.get("splits", {}).items():
        kept = sum(s["count"] for s in entry["shards"])
        excluded = count_reasons(r for s in entry["shards"] for r in s["excluded"].values())
        done = sum(s["num_items"] for s in entry["shards"])
        state = "complete" if entry["complete"] else f"incomplete ({done} of {entry['num_items']} photos processed)"
        reasons = ", ".join(f"{n} {r}" for r, n in excluded.most_common()) or "none"
        views = len(index.get("val_views", [WHOLE])) if name == "val" else 1
        stored = f" ({views} views each)" if views > 1 else ""
        lines.append(f"{name}: {kept} photos{stored} in {len(entry['shards'])} shards, {state}; "
                     f"skipped {sum(excluded.values())} files ({reasons})")
    at_start = count_reasons(index.get("skipped_at_start", {}).values())
    if at_start:
        reasons = ", ".join(f"{n} {r}" for r, n in at_start.most_common())
        lines.append(f"start-up: the source skipped {sum(at_start.values())} files ({reasons})")
    return "\n".join(lines)
