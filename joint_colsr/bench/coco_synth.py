"""A synthetic COCO 2017 layout at full annotation scale, for start-up benchmarks.

    python -m joint_colsr.bench.coco_synth --root /tmp/coco_synth          # 118,287 + 5,000 images

Writes ``annotations/instances_{train,val}2017.json`` shaped like COCO's own (the same keys,
key order and number formats; polygon segmentations, ~1% crowd annotations as RLE counts,
the 80 COCO categories with their real ids, ~1% of images without annotations, sparse image
ids) at COCO's counts: 118,287 training images with ~860,000 annotations (~480 MB of JSON,
COCO's is 448 MB) and 5,000 validation images with ~36,800. The image folders hold one small
JPEG hard-linked under every listed file name (no disk beyond directory entries): start-up
lists the folders, it does not decode.

Pixels mean nothing here: this exercises parsing, indexing and the selection logic only.
"""

from __future__ import annotations

import argparse
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

#: COCO 2017's 80 categories: (id, name, supercategory). Ids run 1..90 with gaps, as COCO's do.
COCO_CATEGORIES: list[tuple[int, str, str]] = [
    (1, "person", "person"), (2, "bicycle", "vehicle"), (3, "car", "vehicle"), (4, "motorcycle", "vehicle"),
    (5, "airplane", "vehicle"), (6, "bus", "vehicle"), (7, "train", "vehicle"), (8, "truck", "vehicle"),
    (9, "boat", "vehicle"), (10, "traffic light", "outdoor"), (11, "fire hydrant", "outdoor"), (13, "stop sign", "outdoor"),
    (14, "parking meter", "outdoor"), (15, "bench", "outdoor"), (16, "bird", "animal"), (17, "cat", "animal"),
    (18, "dog", "animal"), (19, "horse", "animal"), (20, "sheep", "animal"), (21, "cow", "animal"),
    (22, "elephant", "animal"), (23, "bear", "animal"), (24, "zebra", "animal"), (25, "giraffe", "animal"),
    (27, "backpack", "accessory"), (28, "umbrella", "accessory"), (31, "handbag", "accessory"), (32, "tie", "accessory"),
    (33, "suitcase", "accessory"), (34, "frisbee", "sports"), (35, "skis", "sports"), (36, "snowboard", "sports"),
    (37, "sports ball", "sports"), (38, "kite", "sports"), (39, "baseball bat", "sports"), (40, "baseball glove", "sports"),
    (41, "skateboard", "sports"), (42, "surfboard", "sports"), (43, "tennis racket", "sports"), (44, "bottle", "kitchen"),
    (46, "wine glass", "kitchen"), (47, "cup", "kitchen"), (48, "fork", "kitchen"), (49, "knife", "kitchen"),
    (50, "spoon", "kitchen"), (51, "bowl", "kitchen"), (52, "banana", "food"), (53, "apple", "food"),
    (54, "sandwich", "food"), (55, "orange", "food"), (56, "broccoli", "food"), (57, "carrot", "food"),
    (58, "hot dog", "food"), (59, "pizza", "food"), (60, "donut", "food"), (61, "cake", "food"),
    (62, "chair", "furniture"), (63, "couch", "furniture"), (64, "potted plant", "furniture"), (65, "bed", "furniture"),
    (67, "dining table", "furniture"), (70, "toilet", "furniture"), (72, "tv", "electronic"), (73, "laptop", "electronic"),
    (74, "mouse", "electronic"), (75, "remote", "electronic"), (76, "keyboard", "electronic"), (77, "cell phone", "electronic"),
    (78, "microwave", "appliance"), (79, "oven", "appliance"), (80, "toaster", "appliance"), (81, "sink", "appliance"),
    (82, "refrigerator", "appliance"), (84, "book", "indoor"), (85, "clock", "indoor"), (86, "vase", "indoor"),
    (87, "scissors", "indoor"), (88, "teddy bear", "indoor"), (89, "hair drier", "indoor"), (90, "toothbrush", "indoor"),
]

#: COCO 2017's counts: images, annotations.
FULL_SCALE = {"train2017": (118_287, 860_001), "val2017": (5_000, 36_781)}
#: Shares seen in COCO: annotations that are crowds (RLE), images without any annotation,
#: annotations of people (the most common category by far).
CROWD_SHARE, EMPTY_SHARE, PERSON_SHARE = 0.01, 0.0086, 0.30

_LICENSES = [{"url": f"http://creativecommons.org/licenses/by-nc-sa/2.0/#{i}", "id": i, "name": "Attribution-NonCommercial-ShareAlike License"}
             for i in range(1, 9)]
#: Every listed image file is a hard link to a tiny JPEG (8x8 grey), one JPEG per this many links.
_LINKS_PER_FILE = 50_000
_POOL = 4096  # distinct segmentation strings reused at random (parsing cost does not depend on repeats)


def _segmentation_pool(rng: np.random.Generator) -> tuple[list[str], list[str]]:
    """Polygon and crowd (RLE) segmentation texts, with their bbox/area, as COCO writes them."""
    polygons, crowds = [], []
    for _ in range(_POOL):
        points = int(rng.integers(8, 50))
        xy = rng.uniform(0, 640, size=2 * points).round(2)
        seg = "[[" + ",".join(f"{v:.2f}".rstrip("0").rstrip(".") for v in xy) + "]]"
        x0, y0 = float(xy[0::2].min()), float(xy[1::2].min())
        w, h = float(xy[0::2].max()) - x0, float(xy[1::2].max()) - y0
        tail = f'"area":{w * h * 0.61:.5f},"iscrowd":{{crowd}},"image_id":{{image_id}},"bbox":[{x0:.2f},{y0:.2f},{w:.2f},{h:.2f}],'
        polygons.append('{"segmentation":' + seg + "," + tail.replace("{crowd}", "0"))
    for _ in range(_POOL // 16):
        counts = ",".join(str(int(v)) for v in rng.integers(1, 900, size=int(rng.integers(60, 600))))
        crowds.append('{"segmentation":{"counts":[' + counts + '],"size":[480,640]},'
                      '"area":5120.0,"iscrowd":{crowd},"image_id":{image_id},"bbox":[10.0,20.0,200.0,150.0],'.replace("{crowd}", "1"))
    return polygons, crowds


def _write_split(path: Path, image_ids: np.ndarray, annotations: int, first_annotation_id: int, folder: str,
                 rng: np.random.Generator) -> dict[str, Any]:
    """One instances file; returns its counts."""
    n = len(image_ids)
    # Annotations per image: ~1% of images none, the rest spread at random (multinomial: the total is exact).
    annotated = rng.random(n) >= EMPTY_SHARE
    if not annotated.any():
        annotated[0] = True
    counts = np.zeros(n, dtype=np.int64)
    counts[annotated] = rng.multinomial(annotations, np.full(int(annotated.sum()), 1.0 / annotated.sum()))
    owners = np.repeat(image_ids, counts)
    total = len(owners)
    rng.shuffle(owners)  # COCO lists annotations in no particular image order
    cat_ids = np.array([c[0] for c in COCO_CATEGORIES])
    weights = np.full(len(cat_ids), (1.0 - PERSON_SHARE) / (len(cat_ids) - 1))
    weights[0] = PERSON_SHARE
    categories = rng.choice(cat_ids, size=total, p=weights)
    crowd = rng.random(total) < CROWD_SHARE
    polygons, crowds = _segmentation_pool(rng)
    poly_pick = rng.integers(0, len(polygons), size=total)
    crowd_pick = rng.integers(0, len(crowds), size=total)
    widths = np.where(rng.random(n) < 0.25, 480, 640)
    heights = 1120 - widths

    with open(path, "w", encoding="ascii") as out:
        out.write('{"info":{"description":"synthetic COCO 2017 (joint_colsr.bench.coco_synth)","url":"",'
                  '"version":"1.0","year":2017,"contributor":"joint_colsr","date_created":"2017/09/01"},')
        out.write('"licenses":' + json.dumps(_LICENSES, separators=(",", ":")) + ',"images":[')
        buf = io.StringIO()
        for i, image_id in enumerate(image_ids.tolist()):
            if i:
                buf.write(",")
            buf.write(f'{{"license":{1 + image_id % 8},"file_name":"{image_id:012d}.jpg",'
                      f'"coco_url":"http://images.cocodataset.org/{folder}/{image_id:012d}.jpg",'
                      f'"height":{heights[i]},"width":{widths[i]},"date_captured":"2013-11-14 11:18:45",'
                      f'"flickr_url":"http://farm4.staticflickr.com/3153/{image_id}_0a1b2c3d4e_z.jpg","id":{image_id}}}')
        out.write(buf.getvalue())
        out.write('],"annotations":[')
        chunk: list[str] = []
        for j, (owner, cat) in enumerate(zip(owners.tolist(), categories.tolist())):
            head = crowds[crowd_pick[j]] if crowd[j] else polygons[poly_pick[j]]
            chunk.append(head.replace("{image_id}", str(owner), 1) + f'"category_id":{cat},"id":{first_annotation_id + j}}}')
            if len(chunk) == 20_000:
                out.write(("," if j >= 20_000 else "") + ",".join(chunk))
                chunk = []
        if chunk:
            out.write(("," if total > len(chunk) else "") + ",".join(chunk))
        out.write('],"categories":' + json.dumps([{"supercategory": s, "id": i, "name": n} for i, n, s in COCO_CATEGORIES],
                                                  separators=(",", ":")) + "}")
    return {"images": n, "annotations": total, "bytes": path.stat().st_size}


def _tiny_jpeg(path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (8, 8), (120, 130, 140)).save(path, quality=90)


def make_synthetic_coco(root: str | os.PathLike, train_images: int = FULL_SCALE["train2017"][0],
                        val_images: int = FULL_SCALE["val2017"][0], annotations_per_image: float | None = None,
                        seed: int = 0, image_files: bool = True) -> dict[str, Any]:
    """Write the COCO 2017 layout under ``root``; return ``{split folder: {"images", "annotations", "bytes"}}``.

    Args:
        train_images, val_images: images per split (COCO's counts by default).
        annotations_per_image: mean annotations per image (default: COCO's, ~7.27 train, ~7.36 val).
        seed: the same seed writes the same bytes.
        image_files: hard-link one tiny JPEG under every listed file name (what start-up lists).
    """
    root = Path(root)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    # Sparse ids below 600,000 as COCO's, disjoint between the splits.
    ids = rng.choice(np.arange(1, 600_000), size=train_images + val_images, replace=False)
    splits = {"train2017": np.sort(ids[:train_images]), "val2017": np.sort(ids[train_images:])}
    rng.shuffle(splits["train2017"])  # COCO's images list is not sorted by id either
    stats: dict[str, Any] = {}
    first_ann = 1
    linked = 0
    for folder, image_ids in splits.items():
        per_image = annotations_per_image or FULL_SCALE[folder][1] / FULL_SCALE[folder][0]
        count = round(per_image * len(image_ids))
        stats[folder] = _write_split(root / "annotations" / f"instances_{folder}.json", image_ids, count, first_ann, folder, rng)
        first_ann += count
        (root / folder).mkdir(exist_ok=True)
        if image_files:
            for image_id in image_ids.tolist():
                if linked % _LINKS_PER_FILE == 0:  # ext4 allows 65,000 links per file
                    template = root / f".synthetic.{linked // _LINKS_PER_FILE}.jpg"
                    _tiny_jpeg(template)
                target = root / folder / f"{image_id:012d}.jpg"
                if not target.exists():
                    os.link(template, target)
                linked += 1
    return stats


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="folder to write the layout into")
    parser.add_argument("--train-images", type=int, default=FULL_SCALE["train2017"][0])
    parser.add_argument("--val-images", type=int, default=FULL_SCALE["val2017"][0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-image-files", action="store_true", help="annotations only (start-up then finds every image missing)")
    args = parser.parse_args(argv)
    stats = make_synthetic_coco(args.root, args.train_images, args.val_images, seed=args.seed, image_files=not args.no_image_files)
    print(json.dumps(stats, indent=1))


if __name__ == "__main__":
    main()
