"""MS-COCO 2017 through pycocotools: the paper's training data (train2017) and validation set (val2017).

The split is COCO's own: ``train2017`` trains, ``val2017`` validates and evaluates. Each
item carries its image-level labels (the COCO category ids of its annotations), which
models with a classification branch can ask for (``data.with_labels=true``).

Grayscale photos (about 1% of COCO, some stored as 3-channel RGB) are not found here:
finding them means decoding every pixel, which a start-up scan of 118k images cannot
afford. They are detected where the pixels are decoded anyway: when the cache is built
(``python -m joint_colsr.preprocess``; excluded there and counted in the cache index) and,
without a cache, at decode time in the dataset (skipped and counted, like a corrupt file).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from pathlib import Path
from typing import Sequence

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


class CocoSource(ImageSource):
    """Photos of the COCO 2017 layout, split as COCO splits them.

    The layout is checked at construction (start-up); the annotation files are read the
    first time items or categories are needed, so a run that reads a prebuilt cache
    (``data.cache``) never parses the 450 MB training annotations.

    Args:
        root: folder holding ``train2017/``, ``val2017/`` and ``annotations/``.
        categories: keep only images containing at least one of these categories; names
            of categories (``person``) or supercategories (``animal``). ``None``: all images,
            including the ~1% without annotations.
        max_images: keep at most this many images of each split (lowest image ids first).
        max_bad_fraction: fail at start-up when more than this share of a split's listed
            images is missing (or unreadable, with ``check_headers``).
        check_headers: open every image's header at start-up (about a minute for train2017).
    """

    name = "coco"

    def __init__(
        self,
        root: str,
        categories: Sequence[str] | None = None,
        max_images: int | None = None,
        max_bad_fraction: float = 0.01,
        check_headers: bool = False,
    ) -> None:
        super().__init__()
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
        self._splits: dict[str, list[ImageItem]] = {}
        self._categories: dict[int, dict[str, str]] | None = None

    def _annotation_file(self, folder: str) -> Path:
        return self.root / "annotations" / f"instances_{folder}.json"

    def _load_coco(self, folder: str):
        from pycocotools.coco import COCO

        path = self._annotation_file(folder)
        chatter = io.StringIO()  # pycocotools prints progress; keep it in the log instead
        try:
            with contextlib.redirect_stdout(chatter):
                coco = COCO(str(path))
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path} is not a COCO instances file ({type(err).__name__}: {err}); {COCO_LAYOUT_HELP}") from None
        log.info("%s: %s", path.name, " ".join(chatter.getvalue().split()))
        return coco

    @property
    def categories(self) -> dict[int, dict[str, str]]:
        """COCO category id -> ``{"name", "supercategory"}`` (read from the val2017 annotations)."""
        if self._categories is None:
            coco = self._load_coco("val2017")
            self._categories = {int(c["id"]): {"name": c["name"], "supercategory": c["supercategory"]}
                                for c in coco.loadCats(coco.getCatIds())}
        return self._categories

    def _selected_category_ids(self, coco) -> list[int] | None:
        if self.category_names is None:
            return None
        cats = coco.loadCats(coco.getCatIds())
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
        coco = self._load_coco(folder)
        if self._categories is None:
            self._categories = {int(c["id"]): {"name": c["name"], "supercategory": c["supercategory"]}
                                for c in coco.loadCats(coco.getCatIds())}
        wanted = self._selected_category_ids(coco)
        if wanted is None:
            image_ids = set(coco.getImgIds())
        else:  # getImgIds(catIds=[a, b]) means "a and b"; we want "a or b"
            image_ids = set().union(*(coco.getImgIds(catIds=[c]) for c in wanted))
        image_ids = sorted(image_ids)
        if self.max_images is not None:
            image_ids = image_ids[: self.max_images]
        image_dir = self.root / folder
        present = set(os.listdir(image_dir))  # one listdir instead of 118k stat calls
        items = []
        for image_id in image_ids:
            file_name = coco.imgs[image_id]["file_name"]
            path = image_dir / file_name
            if file_name not in present:
                self.skip_report.add(str(path), SkipReason.MISSING.describe())
                continue
            if self.check_headers:
                try:
                    probe_image(path)
                except ImageDecodeError as err:
                    self.skip_report.add(str(path), err.reason)
                    continue
            labels = tuple(sorted({int(a["category_id"]) for a in coco.imgToAnns.get(image_id, [])}))
            key = f"{folder}/{file_name}"
            items.append(ImageItem(key=key, group=key, path=str(path), labels=labels))
        bad = len(image_ids) - len(items)
        if bad:
            log.warning("data.root=%s (%s): %s", self.root, folder, self.skip_report.summary())
        if bad > self.max_bad_fraction * len(image_ids) or not items:
            raise RuntimeError(
                f"data.root={self.root}: {bad} of {len(image_ids)} images of {folder} are missing or unreadable "
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
        """``(train2017 items, val2017 items)``."""
        return self._items_of("train2017"), self._items_of("val2017")

    def is_validation_group(self, group: str) -> bool:
        return group.startswith("val2017/")

    def describe(self) -> dict:
        return {"name": self.name, "categories": self.category_names, "max_images": self.max_images}
