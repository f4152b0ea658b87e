"""MS-COCO 2017 source (pycocotools). Layout checks only until the COCO source lands (issue 4)."""

from __future__ import annotations

from pathlib import Path

from joint_colsr.data.sources import ImageSource

COCO_LAYOUT_HELP = (
    "expected the COCO 2017 layout:\n"
    "  DIR/train2017/*.jpg\n  DIR/val2017/*.jpg\n"
    "  DIR/annotations/instances_train2017.json\n  DIR/annotations/instances_val2017.json"
)


class CocoSource(ImageSource):
    name = "coco"

    def __init__(self, root: str, **_: object) -> None:
        super().__init__()
        self.root = Path(root).expanduser().resolve()
        needed = [self.root / "train2017", self.root / "val2017",
                  self.root / "annotations" / "instances_train2017.json", self.root / "annotations" / "instances_val2017.json"]
        missing = [str(p) for p in needed if not p.exists()]
        if missing:
            raise FileNotFoundError(f"data.root={root!r}: missing {missing}; {COCO_LAYOUT_HELP}")
        raise NotImplementedError("data=coco: the COCO source is not available in this version yet (tracked in issue 4)")
