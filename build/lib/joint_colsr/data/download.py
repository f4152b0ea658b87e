"""Download the official COCO 2017 archives, resuming partial downloads and checking MD5s.

    python -m joint_colsr.data.download --root /data/coco                 # train + val + annotations (19 GB)
    python -m joint_colsr.data.download --root /data/coco --parts val2017 annotations

Each archive is fetched to ``ROOT/downloads/NAME.part``; an interrupted download resumes
with an HTTP ``Range`` request (a server that ignores ranges restarts it from zero); the
finished file is checked against the MD5 the COCO site publishes and only then renamed to
``NAME`` and extracted into ``ROOT`` (``train2017/``, ``val2017/``, ``annotations/``).
``--base-url`` points at a mirror (``http://``, ``https://`` or ``file://``).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import shutil
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from tqdm.auto import tqdm

log = logging.getLogger(__name__)

OFFICIAL_BASE_URL = "http://images.cocodataset.org/"


@dataclass(frozen=True)
class Archive:
    """One archive: its path below the base URL, its MD5, and what extracting it makes."""

    path: str
    md5: str
    makes: str


#: The COCO 2017 archives this suite reads (MD5s as published with the dataset).
COCO_ARCHIVES: dict[str, Archive] = {
    "train2017": Archive("zips/train2017.zip", "cced6f7f71b7629ddf16f17bbcfab6b2", "train2017"),
    "val2017": Archive("zips/val2017.zip", "442b8da7639aecaf257c1dceb8ba8c80", "val2017"),
    "annotations": Archive("annotations/annotations_trainval2017.zip", "f4bbac642086de4f52a3fdda2de5fa2c", "annotations"),
}

CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A download that cannot complete (network, server, or a checksum mismatch)."""


def md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _open(url: str, offset: int, timeout: float):
    """Open ``url`` from byte ``offset``; returns ``(stream, resumed, total_size or None)``."""
    scheme = urllib.parse.urlparse(url).scheme
    if scheme == "file":
        path = Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path))
        if not path.is_file():
            raise DownloadError(f"{url}: no such file")
        total = path.stat().st_size
        stream = open(path, "rb")
        stream.seek(min(offset, total))
        return stream, True, total
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416:  # range not satisfiable: the part file already holds everything
            return None, True, offset
        raise DownloadError(f"{url}: HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, OSError) as err:
        raise DownloadError(f"{url}: {getattr(err, 'reason', err)}") from None
    resumed = response.status == 206
    length = response.headers.get("Content-Length")
    total = (int(length) + (offset if resumed else 0)) if length is not None else None
    return response, resumed, total


def fetch(url: str, dest: str | Path, md5: str | None = None, timeout: float = 60.0, progress: bool = True) -> Path:
    """Download ``url`` to ``dest``, resuming ``dest.part`` if present, and verify ``md5``.

    Returns ``dest``. A complete ``dest`` whose MD5 matches is not fetched again. On a
    checksum mismatch the bad file is deleted and :class:`DownloadError` raised.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        if md5 is None or md5_of(dest) == md5:
            log.info("%s: already downloaded", dest)
            return dest
        log.warning("%s: checksum mismatch, downloading again", dest)
        dest.unlink()
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    stream, resumed, total = _open(url, offset, timeout)
    if stream is not None:
        if offset and not resumed:
            log.warning("%s: the server ignored the Range request; restarting from zero", url)
            offset = 0
        elif offset:
            log.info("%s: resuming at byte %d", url, offset)
        with stream, open(part, "ab" if offset else "wb") as out, tqdm(
            total=total, initial=offset, unit="B", unit_scale=True, desc=dest.name, disable=not progress
        ) as bar:
            while block := stream.read(CHUNK):
                out.write(block)
                bar.update(len(block))
    if total is not None and part.stat().st_size != total:
        raise DownloadError(f"{url}: got {part.stat().st_size} of {total} bytes; run again to resume")
    if md5 is not None:
        got = md5_of(part)
        if got != md5:
            part.unlink()
            raise DownloadError(f"{url}: MD5 {got} does not match the published {md5}; the partial file was deleted, run again")
    part.rename(dest)
    return dest


def extract(archive: Path, root: Path, makes: str) -> Path:
    """Unzip ``archive`` into ``root`` unless ``root/makes`` was already extracted completely."""
    target = root / makes
    marker = target / ".extracted"
    if marker.exists():
        return target
    with zipfile.ZipFile(archive) as zf:
        members = zf.infolist()
        for member in tqdm(members, desc=f"extract {archive.name}", unit="file", disable=len(members) < 1000):
            zf.extract(member, root)
    if not target.is_dir():
        raise DownloadError(f"{archive} did not contain {makes}/")
    marker.touch()  # written last: an interrupted extraction is redone
    return target


def download_coco(
    root: str | Path,
    parts: Sequence[str] = tuple(COCO_ARCHIVES),
    base_url: str = OFFICIAL_BASE_URL,
    archives: dict[str, Archive] | None = None,
    keep_archives: bool = True,
    progress: bool = True,
) -> Path:
    """Fetch, verify and extract ``parts`` of COCO 2017 into ``root``; returns ``root``."""
    archives = archives or COCO_ARCHIVES
    unknown = [p for p in parts if p not in archives]
    if unknown:
        raise ValueError(f"--parts: unknown {unknown}; choose from {list(archives)}")
    root = Path(root).expanduser().resolve()
    base_url = base_url if base_url.endswith("/") else base_url + "/"
    for name in parts:
        archive = archives[name]
        if (root / archive.makes / ".extracted").exists():
            log.info("%s: already extracted", root / archive.makes)
            continue
        dest = fetch(urllib.parse.urljoin(base_url, archive.path), root / "downloads" / Path(archive.path).name,
                     md5=archive.md5, progress=progress)
        extract(dest, root, archive.makes)
        if not keep_archives:
            dest.unlink()
    downloads = root / "downloads"
    if not keep_archives and downloads.is_dir() and not any(downloads.iterdir()):
        shutil.rmtree(downloads)
    return root


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="where train2017/, val2017/ and annotations/ go")
    parser.add_argument("--parts", nargs="+", default=list(COCO_ARCHIVES), choices=list(COCO_ARCHIVES))
    parser.add_argument("--base-url", default=OFFICIAL_BASE_URL, help="mirror of images.cocodataset.org")
    parser.add_argument("--delete-archives", action="store_true", help="delete each zip after extracting it")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    root = download_coco(args.root, args.parts, args.base_url, keep_archives=not args.delete_archives)
    print(f"COCO 2017 in {root}: train with data=coco data.root={root}")


if __name__ == "__main__":
    main()
