"""Data sources: where reference photographs come from, and how they split by photo.

A source lists :class:`ImageItem` objects (a key, a group, and a way to get the pixels)
and splits them into training and validation **by group**, so that no crop, flip or
near-duplicate of a validation photo is ever trained on. Sources check everything they
can at construction time (paths, layout, headers): a wrong ``data.root`` fails at
start-up, not an hour into an epoch.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from joint_colsr.data.decode import (IMAGE_EXTENSIONS, ImageDecodeError, SkipReason, count_reasons, decode_image, probe_image,
                                    size_reason, unusable_reason)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageItem:
    """One reference photograph.

    Attributes:
        key: unique name (a relative path, or a sample photo's name).
        group: items sharing a group always land in the same split (a stereo pair, say).
        path: file to decode, or ``None`` when ``array`` holds the pixels.
        array: ``(H, W, 3)`` uint8 pixels already in memory, or ``None``.
        labels: optional image-level labels (COCO category ids), for models that use them.
    """

    key: str
    group: str
    path: str | None = None
    array: np.ndarray | None = field(default=None, repr=False, compare=False)
    labels: tuple[int, ...] = ()

    def load(self) -> np.ndarray:
        """``(H, W, 3)`` uint8 RGB; raises :class:`ImageDecodeError` for a bad file."""
        if self.array is not None:
            return self.array
        if self.path is None:
            raise ImageDecodeError(self.key, SkipReason.UNREADABLE, "item has neither a path nor pixels")
        return decode_image(self.path)


@dataclass
class SkipReport:
    """Files a source passed over, with the reason for each."""

    skipped: dict[str, str] = field(default_factory=dict)

    def add(self, path: str, reason: str) -> None:
        """``reason``: the recorded text of a :class:`SkipReason` (``err.reason``, ``SkipReason.X.describe()``)."""
        self.skipped[path] = reason

    def __len__(self) -> int:
        return len(self.skipped)

    def summary(self, limit: int = 10) -> str:
        if not self.skipped:
            return "skipped 0 files"
        reasons = count_reasons(self.skipped.values())
        head = "; ".join(f"{n} {r}" for r, n in reasons.most_common())
        examples = "\n".join(f"  {p}: {r}" for p, r in list(self.skipped.items())[:limit])
        more = f"\n  ... and {len(self.skipped) - limit} more" if len(self.skipped) > limit else ""
        return f"skipped {len(self.skipped)} files ({head}):\n{examples}{more}"


class ImageSource:
    """Base class: a named list of items and a split by group.

    ``categories`` maps label ids to ``{"name", "supercategory"}`` for sources whose items
    carry labels (COCO); it is empty otherwise.
    """

    name = "source"

    def __init__(self) -> None:
        self.skip_report = SkipReport()

    @property
    def categories(self) -> dict[int, dict[str, str]]:
        return {}

    def describe(self) -> dict:
        """What selects and splits this source's photos (not where they live): a cache
        built from one source is only read back under the same description."""
        return {"name": self.name}

    def items(self) -> list[ImageItem]:
        raise NotImplementedError

    def excluded_from_validation(self) -> dict[str, str]:
        """Photos of the validation split left out at start-up (path -> recorded reason), for
        reports (``eval``'s metrics); empty for a source that cannot tell which split a
        skipped file belonged to."""
        return {}

    def is_validation_group(self, group: str) -> bool:
        raise NotImplementedError

    def split(self) -> tuple[list[ImageItem], list[ImageItem]]:
        """``(train, val)``: every group entirely on one side."""
        train, val = [], []
        for item in self.items():
            (val if self.is_validation_group(item.group) else train).append(item)
        return train, val

    def validation_items(self) -> list[ImageItem]:
        """The validation side of :meth:`split` alone (``validate``/``test`` stages); sources
        that can list it without reading the training side override this (COCO)."""
        return self.split()[1]


# ---------------------------------------------------------------------------------------
# Embedded sample photographs (scikit-image and scikit-learn ship them: no download)
# ---------------------------------------------------------------------------------------


def _skimage_photo(name: str) -> np.ndarray:
    # The file, through the suite's own decoder (not skimage's loader): rocket.jpg carries
    # an Adobe RGB (1998) profile, which decode_image converts to sRGB like any photo.
    import skimage.data

    for ext in (".png", ".jpg"):
        path = Path(skimage.data.data_dir) / f"{name}{ext}"
        if path.is_file():
            return decode_image(path)
    raise FileNotFoundError(f"scikit-image sample photo {name!r} is not in {skimage.data.data_dir}")


def _matplotlib_photo(filename: str) -> np.ndarray:
    from matplotlib import cbook

    return decode_image(cbook.get_sample_data(filename, asfileobj=False))


def _sklearn_photo(name: str) -> np.ndarray:
    import sklearn.datasets

    return decode_image(Path(sklearn.datasets.__file__).parent / "images" / f"{name}.jpg")


#: The real colour photographs that install with pip (scikit-image, scikit-learn,
#: matplotlib): name -> (group, loader).
#: Excluded on purpose: immunohistochemistry, retina (microscopy / medical), colorwheel
#: and logo (synthetic), and skimage's ``cat`` (the same pixels as ``chelsea``).
SAMPLE_PHOTOS: dict[str, tuple[str, Callable[[], np.ndarray]]] = {
    "astronaut": ("astronaut", lambda: _skimage_photo("astronaut")),
    "chelsea": ("chelsea", lambda: _skimage_photo("chelsea")),
    "coffee": ("coffee", lambda: _skimage_photo("coffee")),
    "rocket": ("rocket", lambda: _skimage_photo("rocket")),
    "hubble_deep_field": ("hubble_deep_field", lambda: _skimage_photo("hubble_deep_field")),
    # A stereo pair: near-duplicates, so one group.
    "motorcycle_left": ("motorcycle", lambda: _skimage_photo("motorcycle_left")),
    "motorcycle_right": ("motorcycle", lambda: _skimage_photo("motorcycle_right")),
    "china": ("china", lambda: _sklearn_photo("china")),
    "flower": ("flower", lambda: _sklearn_photo("flower")),
    "grace_hopper": ("grace_hopper", lambda: _matplotlib_photo("grace_hopper.jpg")),
}


class SamplePhotos(ImageSource):
    """The photographs bundled with scikit-image, scikit-learn and matplotlib (10 photos, 9 scenes).

    Args:
        val_photos: names whose groups form the validation split.
        photos: names to use (default: all of :data:`SAMPLE_PHOTOS`).
    """

    name = "samples"

    def __init__(self, val_photos: Sequence[str] = ("chelsea", "china"), photos: Sequence[str] | None = None) -> None:
        super().__init__()
        photos = list(SAMPLE_PHOTOS) if photos is None else list(photos)
        unknown = [p for p in [*photos, *val_photos] if p not in SAMPLE_PHOTOS]
        if unknown:
            raise ValueError(f"data.source: unknown sample photo(s) {unknown}; choose from {sorted(SAMPLE_PHOTOS)}")
        missing_val = [p for p in val_photos if p not in photos]
        if missing_val:
            raise ValueError(f"data.source.val_photos {missing_val} are not in data.source.photos {photos}")
        self.photos = photos
        self.val_photos = list(val_photos)
        self.val_groups = {SAMPLE_PHOTOS[p][0] for p in val_photos}
        if not self.val_groups:
            raise ValueError("data.source.val_photos is empty: name at least one photo to validate on")
        if all(SAMPLE_PHOTOS[p][0] in self.val_groups for p in photos):
            raise ValueError(f"data.source.val_photos {list(val_photos)} leave no photo to train on")
        self._items: list[ImageItem] | None = None

    def items(self) -> list[ImageItem]:
        if self._items is None:
            self._items = []
            for name in self.photos:
                group, load = SAMPLE_PHOTOS[name]
                arr = np.ascontiguousarray(load()[..., :3], dtype=np.uint8)
                self._items.append(ImageItem(key=name, group=group, array=arr))
        return self._items

    def is_validation_group(self, group: str) -> bool:
        return group in self.val_groups

    def describe(self) -> dict:
        return {"name": self.name, "photos": self.photos, "val_photos": self.val_photos}


# ---------------------------------------------------------------------------------------
# Any folder of images
# ---------------------------------------------------------------------------------------

FOLDER_LAYOUT_HELP = (
    "expected a folder holding image files ({exts}), at any depth, e.g.\n"
    "  DIR/beach.jpg\n  DIR/trip/IMG_0001.JPG\n  DIR/scans/page.png"
)


#: What to do when no usable photo is left (said after the files and their reasons).
USABLE_HELP = ("Add colour photos that decode to data.root, or relax the filter that excludes them: "
               "data.exclude_grayscale=false, a smaller data.min_side, a larger data.max_aspect.")


def _stable_fraction(text: str) -> float:
    """A number in [0, 1) that depends on ``text`` alone (not on Python's hash seed)."""
    return int.from_bytes(hashlib.sha1(text.encode("utf-8")).digest()[:8], "big") / 2**64


def _walk_files(root: Path) -> list[Path]:
    """Every file below ``root``, symlinked sub-folders included (``Path.rglob`` skips them);
    a folder reached twice through links is read once. Broken file links (dangling, looping)
    are listed too, so the caller reports them instead of losing them in silence."""
    seen: set[str] = set()
    out = []
    for folder, dirs, names in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        out += [Path(folder) / n for n in names if (Path(folder) / n).is_file() or (Path(folder) / n).is_symlink()]
    return out


class ImageFolder(ImageSource):
    """Every usable image below ``root`` (recursively), split by file into train and validation.

    The split is a stable hash of each file's relative path, so adding files never moves
    an existing file to the other side. ``val_fraction=1.0`` puts every file in
    validation (what evaluation uses).

    The split is made over usable photos, as far as start-up can tell cheaply: every file's
    header is read (``check_headers``), and files that cannot be read, or whose size fails
    the data config's filters (``min_side``, ``max_aspect``: :func:`size_reason`), are left
    out before the split. Grayscale and truncated files need a full decode: when the
    validation side has at most ``decode_check_limit`` photos (and there is a training
    side), those are decoded at start-up and an unusable one is left out (the next file by
    hash validates instead), so a small folder never validates on a photo that is then
    skipped. Every file left out is in :attr:`skip_report` with its reason.

    Args:
        root: the folder.
        val_fraction: share of files held out for validation (at least one file when > 0).
        extensions: file endings to read (case-insensitive).
        max_bad_fraction: fail at start-up when more than this share of files is unreadable.
        check_headers: open every file's header at start-up (fast) to skip non-images early.
        min_side, max_aspect, exclude_grayscale: the data config's photo filters
            (``data.min_side``, ...; see :func:`unusable_reason`).
        decode_check_limit: decode the validation photos at start-up when there are at most
            this many (0: never).
    """

    name = "folder"

    def __init__(
        self,
        root: str,
        val_fraction: float = 0.1,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
        max_bad_fraction: float = 0.5,
        check_headers: bool = True,
        min_side: int = 16,
        max_aspect: float = 10.0,
        exclude_grayscale: bool = True,
        decode_check_limit: int = 32,
    ) -> None:
        super().__init__()
        if root is None or str(root) in ("", "???"):
            raise ValueError("data.root is not set: pass data.root=DIR, " + FOLDER_LAYOUT_HELP.format(exts=", ".join(extensions)))
        self.root = Path(root).expanduser().resolve()
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"data.root={root!r} ({self.root}) is not a folder; " + FOLDER_LAYOUT_HELP.format(exts=", ".join(extensions))
            )
        if not 0.0 <= val_fraction <= 1.0:
            raise ValueError(f"data.source.val_fraction must be in [0, 1], got {val_fraction}")
        self.val_fraction = float(val_fraction)
        self.extensions = tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions)
        self.filters = {"min_side": int(min_side), "max_aspect": float(max_aspect), "exclude_grayscale": bool(exclude_grayscale)}
        files = sorted(p for p in _walk_files(self.root) if p.suffix.lower() in self.extensions)
        if not files:
            raise FileNotFoundError(f"data.root={self.root} holds no image files; " + FOLDER_LAYOUT_HELP.format(exts=", ".join(self.extensions)))
        readable, usable, unreadable = [], [], 0
        for path in tqdm(files, desc=f"checking {self.root.name}/", unit="file", disable=not check_headers or len(files) < 500):
            if not path.exists():  # a dangling or looping link (os.walk lists it; it has nothing to read)
                self.skip_report.add(str(path), SkipReason.BROKEN_LINK.describe(f"-> {os.readlink(path)}"))
                continue
            if check_headers:
                try:
                    width, height = probe_image(path)
                except ImageDecodeError as err:
                    self.skip_report.add(str(path), err.reason)
                    unreadable += 1
                    continue
                readable.append(path)
                reason = size_reason(width, height, self.filters["min_side"], self.filters["max_aspect"])
                if reason is not None:
                    self.skip_report.add(str(path), reason)
                    continue
            else:
                readable.append(path)
            usable.append(path)
        if unreadable > max_bad_fraction * len(files) or not readable:
            raise RuntimeError(
                f"data.root={self.root}: {unreadable} of {len(files)} image files are unreadable "
                f"(more than data.source.max_bad_fraction={max_bad_fraction}). {self.skip_report.summary(limit=50)}"
            )
        if not usable:
            raise RuntimeError(f"data.root={self.root}: no usable photo: {self.skip_report.summary(limit=50)}\n{USABLE_HELP}")
        # What describe() lists: every readable image file (the filters are the config's, not the folder's).
        self._listed = [(p.relative_to(self.root).as_posix(), p) for p in readable]
        self._items = [ImageItem(key=p.relative_to(self.root).as_posix(), group=p.relative_to(self.root).as_posix(), path=str(p))
                       for p in usable]
        self._rejected_for_validation: set[str] = set()
        self._val_keys = self._split_keys(int(decode_check_limit))
        if self.skip_report:
            log.warning("data.root=%s: %s", self.root, self.skip_report.summary())

    def _split_keys(self, decode_check_limit: int) -> set[str]:
        """The validation keys: a stable hash of the path below ``val_fraction``; small
        validation sides are decode-checked (unusable photos leave the folder's items)."""
        keys = [item.key for item in self._items]
        val_keys = {k for k in keys if _stable_fraction(k) < self.val_fraction}
        both_sides = 0.0 < self.val_fraction < 1.0
        if not both_sides or len(keys) < 2:
            return val_keys
        # Tiny folders: keep at least one file on each side. Candidates in hash order, so
        # the same files validate whatever else the folder holds.
        if not val_keys:
            val_keys = {min(keys, key=_stable_fraction)}
        if len(val_keys) == len(keys):
            val_keys.discard(max(keys, key=_stable_fraction))
        if len(val_keys) > decode_check_limit:
            return val_keys  # checked when decoded (skipped and counted; ReferenceImages names them)
        items = {item.key: item for item in self._items}
        rejected: dict[str, str] = {}
        candidates = sorted(keys, key=_stable_fraction)
        checked: set[str] = set()
        while True:
            for key in sorted(val_keys - checked):
                checked.add(key)
                reason = self._decode_reason(items[key])
                if reason is not None:
                    rejected[key] = reason
                    val_keys.discard(key)
            if val_keys:
                break
            # Every validation photo was unusable: the next usable file by hash validates,
            # unless that would leave nothing to train on.
            remaining = [k for k in candidates if k not in rejected and k not in checked]
            if len(remaining) < 2:
                break
            val_keys = {remaining[0]}
        for key, reason in rejected.items():
            self.skip_report.add(items[key].path, reason)
            self._rejected_for_validation.add(items[key].path)
        self._items = [item for item in self._items if item.key not in rejected]
        if not val_keys:
            listing = "\n".join(f"  {items[k].path}: {r}" for k, r in rejected.items())
            raise RuntimeError(f"data.root={self.root}: no usable photo for validation (the validation split needs one that "
                               f"decodes, in colour, and passes the size filters); decoded at start-up:\n{listing}\n{USABLE_HELP}")
        return val_keys

    def _decode_reason(self, item: ImageItem) -> str | None:
        try:
            rgb = item.load()
        except ImageDecodeError as err:
            return err.reason
        return unusable_reason(rgb, **self.filters)

    def items(self) -> list[ImageItem]:
        return self._items

    def is_validation_group(self, group: str) -> bool:
        return group in self._val_keys

    def excluded_from_validation(self) -> dict[str, str]:
        # Start-up exclusions the hash puts in validation, and the validation photos the decode check left out.
        return {path: reason for path, reason in self.skip_report.skipped.items()
                if _stable_fraction(Path(path).relative_to(self.root).as_posix()) < self.val_fraction
                or path in self._rejected_for_validation}

    def describe(self) -> dict:
        # The files themselves (relative names and sizes), not the folder's path: a cache of
        # folder A is refused for data.root=B, and still accepted when A moved.
        listing = "\n".join(f"{key}\t{path.stat().st_size}" for key, path in self._listed)
        return {"name": self.name, "val_fraction": self.val_fraction, "extensions": list(self.extensions),
                "photos": len(self._listed), "files_sha256": hashlib.sha256(listing.encode()).hexdigest()}
