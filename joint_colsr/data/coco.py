"""MS-COCO 2017: the paper's training data (train2017) and test set (val2017).

Two splits (``validation``):

* ``heldout`` (``data=coco``'s default): a fixed slice of ``val_images`` train2017 photos
  (5,000 by default) validates, the rest of train2017 trains, and val2017 is left for
  ``eval`` alone: what picks the best checkpoint, drives the LR schedule and ranks Optuna
  trials never sees the photos the reported numbers come from. The slice is the
  ``val_images`` photos with the smallest ``sha256(f"{split_seed}:{key}")``: the same photos
  on every machine, for every run seed, whatever order the annotations list them in.
* ``val2017``: COCO's own split, train2017 trains and val2017 validates (what ``eval``
  uses: it scores val2017).

Each item carries its image-level labels (the COCO category ids of its annotations), which
models with a classification branch can ask for (``data.with_labels=true``).

The annotation files are parsed once into a compact index (:mod:`joint_colsr.data.coco_index`:
ids, file names, categories; stored beside the data or in the user cache) that later starts
and every DDP rank read in a fraction of a second. Only the splits a stage needs are read:
``validate``/``test`` with ``validation=val2017`` (what ``eval`` uses) never read train2017's.

Grayscale photos (about 1% of COCO, some stored as 3-channel RGB) are not found here:
finding them means decoding every pixel, which a start-up scan of 118k images cannot
afford. They are detected where the pixels are decoded anyway: when the cache is built
(``python -m joint_colsr.preprocess``; excluded there and counted in the cache index) and,
without a cache, at decode time in the dataset (skipped and counted, like a corrupt file).
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from joint_colsr.data.coco_index import InstancesIndex, load_index
from joint_colsr.data.decode import ImageDecodeError, SkipReason, probe_image
from joint_colsr.data.sources import ImageItem, ImageSource

log = logging.getLogger(__name__)

COCO_LAYOUT_HELP = (
    "expected the COCO 2017 layout (python -m joint_colsr.data.download --root DIR fetches it):\n"
    "  DIR/train2017/*.jpg\n  DIR/val2017/*.jpg\n"
    "  DIR/annotations/instances_train2017.json\n  DIR/annotations/instances_val2017.json"
)

#: COCO split folder -> our split.
COCO_SPLITS = {"train2017": "train", "val2017": "val"}
#: What validates: a held-out slice of train2017, or val2017.
VALIDATIONS = ("heldout", "val2017")


def heldout_keys(keys: Sequence[str], count: int, seed: int) -> set[str]:
    """The ``count`` keys with the smallest ``sha256(f"{seed}:{key}")``: a fixed, seeded slice."""
    ranked = sorted(keys, key=lambda k: hashlib.sha256(f"{seed}:{k}".encode()).hexdigest())
    return set(ranked[:count])


class CocoSource(ImageSource):
    """Photos of the COCO 2017 layout, split as COCO splits them.

    The layout is checked at construction (start-up); the annotation indexes are read the
    first time items or categories are needed, so a run that reads a prebuilt cache
    (``data.cache``) never reads the training annotations.

    Args:
        root: folder holding ``train2017/``, ``val2017/`` and ``annotations/``.
        categories: keep only images containing at least one of these categories; names
            of categories (``person``) or supercategories (``animal``). ``None``: all images,
            including the ~1% without annotations.
        max_images: keep at most this many images of each split (lowest image ids first).
        max_bad_fraction: fail at start-up when more than this share of a split's listed
            images is missing (or unreadable, with ``check_headers``).
        check_headers: open every image's header at start-up (about a minute for train2017).
        validation: ``heldout`` (a slice of train2017 validates; val2017 is for ``eval``) or
            ``val2017`` (COCO's own split); see the module docs.
        val_images: size of the held-out slice (``heldout`` only).
        split_seed: seed of the held-out slice (fixed: not the run's seed).
        index_dir: folder of the compact annotation indexes; ``None``: beside the data
            (``annotations/.joint_colsr/``), or the user cache when that is read-only
            (:mod:`joint_colsr.data.coco_index`).
    """

    name = "coco"

    def __init__(
        self,
        root: str,
        categories: Sequence[str] | None = None,
        max_images: int | None = None,
        max_bad_fraction: float = 0.01,
        check_headers: bool = False,
        validation: str = "val2017",
        val_images: int = 5000,
        split_seed: int = 0,
        index_dir: str | None = None,
    ) -> None:
        super().__init__()
        if validation not in VALIDATIONS:
            raise ValueError(f"data.source.validation must be one of {', '.join(VALIDATIONS)}, got {validation!r}")
        if validation == "heldout" and int(val_images) < 1:
            raise ValueError(f"data.source.val_images must be >= 1, got {val_images}")
        self.validation, self.val_images, self.split_seed = validation, int(val_images), int(split_seed)
        self._heldout: set[str] | None = None
        if root is None or str(root) in ("", "???"):
            raise ValueError("data.root is not set: pass data.root=DIR; " + COCO_LAYOUT_HELP)
        self.root = Path(root).expanduser().resolve()
        needed = [self.root / folder for folder in COCO_SPLITS] + [self._annotation_file(folder) for folder in COCO_SPLITS]
        missing = [str(p) for p in needed if not p.exists()]
        if missing:
            raise FileNotFoundError(f"data.root={root!r}: missing {', '.join(missing)}; {COCO_LAYOUT_HELP}")
        if max_images is not None and int(max_images) < 1:
            raise ValueError(f"data.max_images must be a positive integer or null, got {max_images}")
        if not 0.0 <= max_bad_fraction <= 1.0:
            raise ValueError(f"data.source.max_bad_fraction must be in [0, 1], got {max_bad_fraction}")
        self.category_names = sorted(str(c) for c in categories) if categories else None
        self.max_images = int(max_images) if max_images is not None else None
        self.max_bad_fraction = float(max_bad_fraction)
        self.check_headers = check_headers
        self.index_dir = index_dir
        self._splits: dict[str, list[ImageItem]] = {}
        self._categories: dict[int, dict[str, str]] | None = None

    def _annotation_file(self, folder: str) -> Path:
        return self.root / "annotations" / f"instances_{folder}.json"

    def _index(self, folder: str) -> InstancesIndex:
        try:
            return load_index(self._annotation_file(folder), self.index_dir)
        except ValueError as err:  # not an instances file: say what is expected
            raise ValueError(f"{err}; {COCO_LAYOUT_HELP}") from None

    @staticmethod
    def _category_table(index: InstancesIndex) -> dict[int, dict[str, str]]:
        return {c["id"]: {"name": c["name"], "supercategory": c["supercategory"]} for c in index.categories}

    @property
    def categories(self) -> dict[int, dict[str, str]]:
        """COCO category id -> ``{"name", "supercategory"}`` (read from the val2017 annotations)."""
        if self._categories is None:
            self._categories = self._category_table(self._index("val2017"))
        return self._categories

    def _selected_category_ids(self, index: InstancesIndex) -> list[int] | None:
        if self.category_names is None:
            return None
        cats = index.categories
        ids: set[int] = set()
        unknown = []
        for name in self.category_names:
            found = {c["id"] for c in cats if name in (c["name"], c["supercategory"])}
            if not found:
                unknown.append(name)
            ids |= found
        if unknown:
            names = sorted({c["name"] for c in cats} | {c["supercategory"] for c in cats})
            raise ValueError(f"data.categories: unknown COCO categories {unknown}; choose from {names}")
        return sorted(ids)

    def _load_split(self, folder: str) -> list[ImageItem]:
        index = self._index(folder)
        log.info("COCO %s: annotation index %s", folder, index.origin)
        if self._categories is None:
            self._categories = self._category_table(index)
        wanted = self._selected_category_ids(index)
        rows = np.arange(len(index)) if wanted is None else np.flatnonzero(index.containing_any(wanted))
        if self.max_images is not None:  # image ids ascend: the lowest ids first
            rows = rows[: self.max_images]
        image_dir = self.root / folder
        present = set(os.listdir(image_dir))  # one listdir instead of 118k stat calls
        labels = index.labels()
        names = index.file_names[rows].tolist()
        prefix = os.path.join(image_dir, "")  # + name: str(image_dir / name) without a Path per photo
        items = []
        for row, file_name in zip(rows.tolist(), names):
            path = prefix + file_name
            if file_name not in present:
                self.skip_report.add(path, SkipReason.MISSING.describe())
                continue
            if self.check_headers:
                try:
                    probe_image(path)
                except ImageDecodeError as err:
                    self.skip_report.add(path, err.reason)
                    continue
            key = f"{folder}/{file_name}"
            items.append(ImageItem(key=key, group=key, path=path, labels=labels[row]))
        bad = len(rows) - len(items)
        if bad:
            log.warning("data.root=%s (%s): %s", self.root, folder, self.skip_report.summary())
        if bad > self.max_bad_fraction * len(rows) or not items:
            raise RuntimeError(
                f"data.root={self.root}: {bad} of {len(rows)} images of {folder} are missing or unreadable "
                f"(more than data.source.max_bad_fraction={self.max_bad_fraction}). {self.skip_report.summary(limit=50)}"
            )
        what = f"containing {self.category_names}" if self.category_names else "in all"
        log.info("COCO %s: %d images %s", folder, len(items), what)
        return items

    def _items_of(self, folder: str) -> list[ImageItem]:
        if folder not in self._splits:
            self._splits[folder] = self._load_split(folder)
        return self._splits[folder]

    def items(self) -> list[ImageItem]:
        return [item for folder in COCO_SPLITS for item in self._items_of(folder)]

    def split(self) -> tuple[list[ImageItem], list[ImageItem]]:
        """``(training items, validation items)``: train2017 minus the held-out slice and the
        slice (``heldout``), or train2017 and val2017 (``val2017``)."""
        train = self._items_of("train2017")
        if self.validation == "val2017":
            return train, self._items_of("val2017")
        held = self._heldout_keys()
        return [i for i in train if i.key not in held], [i for i in train if i.key in held]

    def validation_items(self) -> list[ImageItem]:
        """What validates, reading only what it needs: val2017 alone (``val2017``: what ``eval``
        scores), or the held-out slice, which train2017's annotations define."""
        if self.validation == "val2017":
            return self._items_of("val2017")
        return self.split()[1]

    def _heldout_keys(self) -> set[str]:
        if self._heldout is None:
            keys = [i.key for i in self._items_of("train2017")]
            if self.val_images >= len(keys):
                raise ValueError(f"data.source.val_images={self.val_images} held-out photos, but the selection holds only "
                                 f"{len(keys)} train2017 photos: lower data.source.val_images")
            self._heldout = heldout_keys(keys, self.val_images, self.split_seed)
            log.info("COCO: %d train2017 photos held out for validation (split_seed %d); val2017 is left for eval",
                     len(self._heldout), self.split_seed)
        return self._heldout

    def is_validation_group(self, group: str) -> bool:
        if self.validation == "val2017":
            return group.startswith("val2017/")
        return group in self._heldout_keys()

    def describe(self) -> dict:
        out = {"name": self.name, "categories": self.category_names, "max_images": self.max_images}
        if self.validation == "heldout":  # a cache built for one split must not serve another
            out.update(validation=self.validation, val_images=self.val_images, split_seed=self.split_seed)
        return out
