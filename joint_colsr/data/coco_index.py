"""A compact index of a COCO instances file: parsed once, read back in milliseconds.

    python -m joint_colsr.data.coco_index --root /data/coco     # build (or check) both splits' indexes now

``instances_train2017.json`` is ~450 MB of JSON; what the suite needs of it is the image ids,
their file names, each image's category ids and the categories table (a few MB). The first
start parses the file once (:func:`parse_instances`: the stdlib JSON parser with a hook that
drops each annotation's segmentation as soon as it is read, so the polygons never fill
memory together as they do in pycocotools) and stores those arrays as one ``.npz``; every
later start, and every DDP rank, reads only that file (``python -m joint_colsr.bench.coco_startup``
measures both).

Where the index lives (:func:`load_index`, ``data.source.index_dir``):

* default: beside the data, ``<root>/annotations/.joint_colsr/``; when that folder cannot be
  written (a read-only data set), the user cache, ``$XDG_CACHE_HOME/joint_colsr/coco_index/``
  (``~/.cache/...``); an index already present in either place is read;
* ``index_dir=DIR``: there only.

The file is named ``instances_<split>.<key>.npz``, the key being a digest of the annotation
file's size, modification time (ns) and its first and last MiB (not its path: an index
moved with the data, with times preserved as ``mv``, ``cp -a`` or ``rsync -a`` do, is still
found). An edited annotation file gets a new key, so it is parsed again and the older index
of the same file is removed. Builders of the same folder take turns under a lock
(``.lock`` in that folder): with 8 ranks starting together one parses, the others wait and
read; the file is written atomically, so a reader never sees half an index.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from joint_colsr.run.outputs import atomic_write

log = logging.getLogger(__name__)

#: Bumped whenever the stored arrays change meaning: an index of another format is rebuilt.
INDEX_FORMAT = 1
#: Bytes hashed at each end of the annotation file for its key (cheap: a full sha256 of
#: 450 MB would cost a second or more at every start).
_EDGE_BYTES = 1 << 20
#: Folder beside the annotation files that holds their indexes.
BESIDE_DATA = ".joint_colsr"


@dataclass(frozen=True)
class InstancesIndex:
    """What the suite uses of one COCO instances file.

    Attributes:
        image_ids: ``(N,)`` int64, ascending.
        file_names: ``(N,)`` str, the file name of each image.
        label_starts: ``(N + 1,)`` int64: image ``i``'s category ids are
            ``label_ids[label_starts[i]:label_starts[i + 1]]``.
        label_ids: int64, ascending and distinct within each image (the categories of its annotations).
        categories: ``[{"id", "name", "supercategory"}]`` in the file's order.
        origin: where it came from, for the log (``parsed ...`` or ``read from ...``).
    """

    image_ids: np.ndarray
    file_names: np.ndarray
    label_starts: np.ndarray
    label_ids: np.ndarray
    categories: list[dict[str, Any]]
    origin: str = field(default="", compare=False)

    def __len__(self) -> int:
        return len(self.image_ids)

    def labels(self) -> list[tuple[int, ...]]:
        """Each image's category ids, as tuples (one list for all images: cheaper than N slices)."""
        flat = self.label_ids.tolist()
        starts = self.label_starts.tolist()
        return [tuple(flat[a:b]) for a, b in itertools.pairwise(starts)]

    def containing_any(self, category_ids: list[int]) -> np.ndarray:
        """``(N,)`` bool: images with at least one annotation of these categories."""
        owner = np.repeat(np.arange(len(self.image_ids)), np.diff(self.label_starts))
        found = np.zeros(len(self.image_ids), dtype=bool)
        found[owner[np.isin(self.label_ids, category_ids)]] = True
        return found


def _compact(obj: dict[str, Any]) -> Any:
    """``json`` object hook: each object is replaced as soon as it is decoded, so the ~860k
    annotations' polygons never coexist in memory (what makes pycocotools peak at several GiB)."""
    if "category_id" in obj and "image_id" in obj:  # an annotation
        return (obj["image_id"], obj["category_id"])
    if "file_name" in obj:  # an image
        return (obj["id"], obj["file_name"])
    if "counts" in obj and "size" in obj:  # a crowd annotation's RLE mask
        return None
    return obj  # categories, info, licenses


def parse_instances(path: str | os.PathLike) -> InstancesIndex:
    """Parse a COCO instances JSON into an :class:`InstancesIndex` (one pass, polygons dropped).

    Matches pycocotools' reading: an image id listed twice keeps its last file name; the
    categories are listed in the file's order. Annotations of images the file does not
    list are ignored. Raises ``ValueError`` naming the file when it is not an instances file.
    """
    path = Path(path)
    start = time.perf_counter()
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.loads(handle.read(), object_hook=_compact)
        if not isinstance(data, dict):
            raise TypeError(f"the top level is a {type(data).__name__}, not an object")
        files = dict(data.get("images", []))  # id -> file name; the last listing wins, as in pycocotools
        image_ids = np.array(sorted(files), dtype=np.int64)
        file_names = np.array([files[i] for i in image_ids.tolist()], dtype=str)
        if not len(file_names):
            file_names = np.zeros(0, dtype="<U1")
        pairs = np.array(data.get("annotations", []), dtype=np.int64).reshape(-1, 2)
        categories = [{"id": int(c["id"]), "name": str(c["name"]), "supercategory": str(c["supercategory"])}
                      for c in data.get("categories", [])]
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is not a COCO instances file ({type(err).__name__}: {err})") from None
    # (image row, category) pairs, sorted and distinct: the labels of each image.
    row = np.searchsorted(image_ids, pairs[:, 0])
    listed = row < len(image_ids)
    listed[listed] = image_ids[row[listed]] == pairs[listed, 0]
    row, cat = row[listed], pairs[listed, 1]
    order = np.lexsort((cat, row))
    row, cat = row[order], cat[order]
    distinct = np.ones(len(row), dtype=bool)
    distinct[1:] = (row[1:] != row[:-1]) | (cat[1:] != cat[:-1])
    row, cat = row[distinct], cat[distinct]
    label_starts = np.searchsorted(row, np.arange(len(image_ids) + 1)).astype(np.int64)
    seconds = time.perf_counter() - start
    return InstancesIndex(image_ids, file_names, label_starts, cat, categories,
                          origin=f"parsed {path} in {seconds:.1f} s ({len(image_ids)} images, {len(pairs)} annotations)")


# -- the stored index --------------------------------------------------------------------


def source_key(path: Path) -> dict[str, Any]:
    """What identifies one version of an annotation file: size, mtime (ns), a digest of its ends."""
    stat = path.stat()
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        digest.update(handle.read(_EDGE_BYTES))
        if stat.st_size > _EDGE_BYTES:
            handle.seek(max(_EDGE_BYTES, stat.st_size - _EDGE_BYTES))
            digest.update(handle.read())
    return {"format": INDEX_FORMAT, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "ends_sha256": digest.hexdigest()}


def index_name(path: Path, key: dict[str, Any]) -> str:
    """``instances_train2017.<16 hex digits of the key>.npz``."""
    return f"{path.stem}.{hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]}.npz"


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/joint_colsr`` (default ``~/.cache/joint_colsr``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "joint_colsr"


def index_folders(annotation_file: Path, index_dir: str | os.PathLike | None = None) -> list[Path]:
    """Where the index of ``annotation_file`` is looked for, in order; it is written to the first writable one."""
    if index_dir is not None and str(index_dir) not in ("", "null"):
        return [Path(index_dir).expanduser()]
    return [annotation_file.parent / BESIDE_DATA, user_cache_dir() / "coco_index"]


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)


def _meta(path: Path) -> dict[str, Any]:
    with np.load(path, allow_pickle=False) as stored:
        return json.loads(str(stored["meta"]))


def read_index(path: Path, key: dict[str, Any]) -> InstancesIndex | None:
    """The index stored at ``path`` if it is there, readable and of this key; else ``None``."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as stored:
            meta = json.loads(str(stored["meta"]))
            if meta.get("key") != key:
                return None
            return InstancesIndex(stored["image_ids"], stored["file_names"], stored["label_starts"], stored["label_ids"],
                                  meta["categories"], origin=f"read from {path}")
    except Exception as err:  # a damaged index is rebuilt, never trusted
        log.warning("COCO annotation index %s is unreadable (%s: %s); it is rebuilt", path, type(err).__name__, err)
        return None


def write_index(path: Path, index: InstancesIndex, key: dict[str, Any], annotation_file: Path) -> None:
    """Store ``index`` at ``path`` atomically (a reader sees the old file or the whole new one)."""
    meta = {"key": key, "annotation_file": str(annotation_file), "categories": index.categories}
    with atomic_write(path, "wb") as handle:
        np.savez(handle, image_ids=index.image_ids, file_names=index.file_names, label_starts=index.label_starts,
                 label_ids=index.label_ids, meta=np.array(json.dumps(meta)))


def _remove_stale(folder: Path, keep: Path, annotation_file: Path) -> None:
    """Older indexes of the same annotation file, and temporary files of interrupted writes."""
    for orphan in folder.glob(f".{annotation_file.stem}.*.tmp"):
        orphan.unlink(missing_ok=True)
    for other in folder.glob(f"{annotation_file.stem}.*.npz"):
        if other == keep:
            continue
        try:
            stale = _meta(other).get("annotation_file") == str(annotation_file)
        except Exception:  # unreadable: whose it was cannot be told, so it stays
            stale = False
        if stale:
            log.info("removing %s: an index of an earlier version of %s", other, annotation_file)
            other.unlink(missing_ok=True)


def load_index(annotation_file: str | os.PathLike, index_dir: str | os.PathLike | None = None) -> InstancesIndex:
    """The compact index of ``annotation_file``: read when stored, else parsed once and stored.

    See the module docs for where it is looked for and written. When no folder can be
    written the file is parsed and nothing is stored (logged: every start then parses).
    """
    annotation_file = Path(annotation_file).resolve()
    key = source_key(annotation_file)
    name = index_name(annotation_file, key)
    folders = index_folders(annotation_file, index_dir)
    for folder in folders:
        found = read_index(folder / name, key)
        if found is not None:
            return found
    target = next((f for f in folders if _writable(f)), None)
    if target is None:
        log.warning("no writable folder for the index of %s (tried %s; set data.source.index_dir=DIR): "
                    "parsing it, at every start", annotation_file, ", ".join(map(str, folders)))
        return parse_instances(annotation_file)
    from joint_colsr.run.resume import lock_folder  # (here: resume imports lightning)

    with lock_folder(target, f"the index of {annotation_file} in {target} is being built by pid {{pid}}", wait=True):
        found = read_index(target / name, key)  # built by another process while this one waited
        if found is not None:
            return found
        log.info("parsing %s once; its compact index goes to %s", annotation_file, target / name)
        index = parse_instances(annotation_file)
        if source_key(annotation_file) != key:
            log.warning("%s changed while it was parsed: its index is not stored", annotation_file)
            return index
        write_index(target / name, index, key, annotation_file)
        _remove_stale(target, target / name, annotation_file)
    return index


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build (or read back) the compact index of a COCO root's instances files.")
    parser.add_argument("--root", required=True, help="the COCO 2017 folder (annotations/instances_{train,val}2017.json)")
    parser.add_argument("--index-dir", default=None, help="where the index goes (default: beside the data, or the user cache)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for split in ("train2017", "val2017"):
        index = load_index(Path(args.root).expanduser() / "annotations" / f"instances_{split}.json", args.index_dir)
        print(f"{split}: {len(index)} images; {index.origin}")


if __name__ == "__main__":
    main()
