"""The COCO downloader's resume and checksum logic, against a loopback HTTP server and file:// URLs."""

import hashlib
import http.server
import re
import threading
import zipfile
from pathlib import Path

import pytest

from joint_colsr.data.download import Archive, DownloadError, download_coco, fetch


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files from the test's folder, honouring ``Range: bytes=N-`` (unless told not to)."""

    honour_range = True
    seen_ranges: list = []

    def do_GET(self):
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        match = re.match(r"bytes=(\d+)-$", self.headers.get("Range", ""))
        type(self).seen_ranges.append(self.headers.get("Range"))
        if match and self.honour_range:
            start = int(match.group(1))
            if start >= len(data):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            data = data[start:]
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    RangeHandler.seen_ranges = []
    RangeHandler.honour_range = True
    handler = lambda *a, **k: RangeHandler(*a, directory=str(served), **k)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


def _payload(n=300_000) -> bytes:
    return hashlib.sha256(b"seed").digest() * (n // 32)


@pytest.mark.parametrize("honour_range", [True, False])
def test_resumes_a_partial_download_and_checks_md5(server, tmp_path, honour_range):
    served, url = server
    data = _payload()
    (served / "blob.zip").write_bytes(data)
    RangeHandler.honour_range = honour_range
    dest = tmp_path / "dl" / "blob.zip"
    dest.parent.mkdir()
    (dest.parent / "blob.zip.part").write_bytes(data[:123_456])  # an interrupted earlier run
    fetch(url + "blob.zip", dest, md5=hashlib.md5(data).hexdigest(), progress=False)
    assert dest.read_bytes() == data and not (dest.parent / "blob.zip.part").exists()
    assert RangeHandler.seen_ranges == ["bytes=123456-"]  # asked to resume; restarted if the server would not


def test_a_complete_part_file_is_not_fetched_again(server, tmp_path):
    served, url = server
    data = _payload()
    (served / "blob.zip").write_bytes(data)
    (tmp_path / "blob.zip.part").write_bytes(data)
    fetch(url + "blob.zip", tmp_path / "blob.zip", md5=hashlib.md5(data).hexdigest(), progress=False)
    assert (tmp_path / "blob.zip").read_bytes() == data


def test_checksum_mismatch_deletes_the_file_and_says_so(server, tmp_path):
    served, url = server
    (served / "blob.zip").write_bytes(_payload())
    with pytest.raises(DownloadError, match="does not match the published 0+; the partial file was deleted"):
        fetch(url + "blob.zip", tmp_path / "blob.zip", md5="0" * 32, progress=False)
    assert not (tmp_path / "blob.zip").exists() and not (tmp_path / "blob.zip.part").exists()


def test_http_errors_name_the_url(server, tmp_path):
    _, url = server
    with pytest.raises(DownloadError, match=r"missing.zip: HTTP 404"):
        fetch(url + "missing.zip", tmp_path / "x.zip", progress=False)


def test_download_coco_from_a_file_url_mirror_resumes_and_extracts(tmp_path):
    mirror = tmp_path / "mirror"
    (mirror / "zips").mkdir(parents=True)
    archive = mirror / "zips" / "val2017.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(3):
            zf.writestr(f"val2017/{i:012d}.jpg", _payload(50_000 + i))
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    root = tmp_path / "coco"
    (root / "downloads").mkdir(parents=True)
    (root / "downloads" / "val2017.zip.part").write_bytes(archive.read_bytes()[:40_000])
    archives = {"val2017": Archive("zips/val2017.zip", md5, "val2017")}
    download_coco(root, ["val2017"], base_url=mirror.as_uri(), archives=archives, progress=False)
    assert sorted(p.name for p in (root / "val2017").glob("*.jpg")) == [f"{i:012d}.jpg" for i in range(3)]
    assert (root / "downloads" / "val2017.zip").read_bytes() == archive.read_bytes()
    archive.unlink()  # done once: a second run neither downloads nor extracts
    download_coco(root, ["val2017"], base_url=mirror.as_uri(), archives=archives, progress=False)
    with pytest.raises(ValueError, match=r"--parts: unknown \['test2017'\]"):
        download_coco(root, ["test2017"], archives=archives)
