"""CryoPPP table, download and extraction against a real HTTP server on 127.0.0.1 (no internet)."""

from __future__ import annotations

import http.server
import io
import json
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest

from cryoparticle.data import cryoppp
from cryoparticle.errors import InputError


# --------------------------------------------------------------------------- server


class _Server:
    """Serves ``files`` (URL path → bytes) with HTTP Range support; ``drop_after`` makes the
    next ``drops`` responses close the connection after that many body bytes."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.content_type: dict[str, str] = {}
        self.drop_after: int | None = None
        self.drops = 0
        self.requests: list[tuple[str, str | None]] = []
        self.bytes_sent = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # noqa: ANN002
                pass

            def do_GET(self) -> None:  # noqa: N802
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start, status = 0, 200
                if rng and rng.startswith("bytes="):
                    start = int(rng[6:].split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    status = 206
                payload = body[start:]
                self.send_response(status)
                self.send_header("Content-Type", server.content_type.get(
                    self.path, "application/gzip"))
                self.send_header("Content-Length", str(len(payload)))
                if status == 206:
                    self.send_header("Content-Range",
                                     f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.end_headers()
                if server.drops > 0 and server.drop_after is not None:
                    server.drops -= 1
                    payload = payload[:server.drop_after]
                    self.close_connection = True
                self.wfile.write(payload)
                server.bytes_sent += len(payload)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/cryoppp"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.close()


def _tar_gz(members: dict[str, bytes], top: str | None = "10017") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"{top}/{name}" if top else name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _dataset_archive(seed: int = 0) -> tuple[bytes, dict[str, bytes]]:
    rng = np.random.default_rng(seed)
    members = {"micrographs/a.mrc": rng.bytes(300_000), "micrographs/b.mrc": rng.bytes(200_000),
               "ground_truth/particle_coordinates/a.csv":
                   b"X-Coordinate,Y-Coordinate,Diameter\n10,20,108\n"}
    return _tar_gz(members), members


def _download(server: _Server, root: Path, **kw):
    kw.setdefault("retries", 3)
    return cryoppp.download(10017, root, base_url=server.url, progress=False,
                            chunk_bytes=16_384, timeout_s=10, **kw)


# --------------------------------------------------------------------------- table


def test_table_has_the_papers_rows():
    table = cryoppp.load_table()
    assert len(table) == 34 and table["empiar_id"].is_unique
    info = cryoppp.dataset_info("EMPIAR-10017")
    assert info["particle_diameter_px"] == 108 and info["pixel_size_a"] == pytest.approx(1.77)
    assert info["particle_diameter_a"] == pytest.approx(191.2, abs=0.1)
    assert info["n_micrographs"] == 84 and info["n_particles"] == 49391
    assert cryoppp.dataset_info(10947)["particle_diameter_px"] == 240
    # a value the source does not give is None, not invented
    assert cryoppp.dataset_info(10059)["pixel_size_a"] is None
    assert cryoppp.dataset_info(10059)["archive_bytes"] is None


def test_unknown_id_is_one_line_error():
    with pytest.raises(InputError, match="99999: not a CryoPPP dataset"):
        cryoppp.dataset_info(99999)
    with pytest.raises(InputError, match="EMPIAR number"):
        cryoppp.dataset_info("beta-gal")


def test_cli_list_and_bad_input(tmp_path):
    out = subprocess.run([sys.executable, "-m", "cryoparticle.data.cryoppp", "list"],
                         capture_output=True, text=True, check=True)
    assert "10017" in out.stdout and "Beta-galactosidase" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "cryoparticle.data.cryoppp", "download", "99999",
                          f"root={tmp_path}"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert "99999" in bad.stderr and "Traceback" not in bad.stderr


# --------------------------------------------------------------------------- download


def test_full_download_extracts_and_marks(server, tmp_path):
    archive, members = _dataset_archive()
    server.files["/cryoppp/10017.tar.gz"] = archive
    folder = _download(server, tmp_path)
    assert folder == tmp_path / "10017"
    for name, data in members.items():
        assert (folder / name).read_bytes() == data
    marker = json.loads((folder / cryoppp.MARKER).read_text())
    assert marker["archive_bytes"] == len(archive) and marker["empiar_id"] == 10017
    assert not (tmp_path / "10017.tar.gz").exists()          # not kept by default
    assert not list(tmp_path.glob("*.part")) and not list(tmp_path.glob(".*extracting*"))


def test_cache_hit_transfers_nothing(server, tmp_path):
    server.files["/cryoppp/10017.tar.gz"] = _dataset_archive()[0]
    _download(server, tmp_path)
    n_requests, sent = len(server.requests), server.bytes_sent
    server.files.clear()  # the server has nothing now: a request would fail
    assert _download(server, tmp_path) == tmp_path / "10017"
    assert len(server.requests) == n_requests and server.bytes_sent == sent


def test_interrupted_transfer_resumes_with_range(server, tmp_path):
    archive, members = _dataset_archive(1)
    server.files["/cryoppp/10017.tar.gz"] = archive
    server.drop_after, server.drops = 100_000, 2           # two dropped connections
    folder = _download(server, tmp_path)
    assert (folder / "micrographs/a.mrc").read_bytes() == members["micrographs/a.mrc"]
    ranges = [r for _, r in server.requests]
    assert ranges == [None, "bytes=100000-", "bytes=200000-"]
    assert server.bytes_sent == len(archive)                # no byte sent twice


def test_interruption_beyond_retries_keeps_part_for_next_call(server, tmp_path):
    archive, _ = _dataset_archive(2)
    server.files["/cryoppp/10017.tar.gz"] = archive
    server.drop_after, server.drops = 50_000, 2
    with pytest.raises(InputError, match="interrupted at 100000 of .* run the command again"):
        _download(server, tmp_path, retries=1)
    part = tmp_path / "10017.tar.gz.part"
    assert part.stat().st_size == 100_000 and not (tmp_path / "10017").exists()
    folder = _download(server, tmp_path)                    # the next call resumes
    assert server.requests[-1][1] == "bytes=100000-" and cryoppp.is_complete(folder)
    assert server.bytes_sent == len(archive)


def test_wrong_size_is_refused(server, tmp_path):
    archive, _ = _dataset_archive(3)
    server.files["/cryoppp/10017.tar.gz"] = archive
    with pytest.raises(InputError, match=f"offers {len(archive)} bytes, expected 123"):
        _download(server, tmp_path, archive_bytes=123)
    assert list(tmp_path.iterdir()) in ([], [tmp_path / "10017.tar.gz.part"])
    assert not (tmp_path / "10017").exists()


def test_html_page_instead_of_archive(server, tmp_path):
    page = b"<!DOCTYPE html><html><body>Not found, try later</body></html>"
    server.files["/cryoppp/10017.tar.gz"] = page
    server.content_type["/cryoppp/10017.tar.gz"] = "text/html; charset=utf-8"
    with pytest.raises(InputError, match="HTML page"):
        _download(server, tmp_path)
    server.content_type.clear()  # a server that says it sends gzip but sends a page
    with pytest.raises(InputError, match="not a .tar.gz archive"):
        _download(server, tmp_path)
    assert not any(p.name.startswith("10017") for p in tmp_path.iterdir())


def test_truncated_archive_leaves_nothing(server, tmp_path):
    archive, _ = _dataset_archive(4)
    server.files["/cryoppp/10017.tar.gz"] = archive[: len(archive) // 2]  # complete transfer
    with pytest.raises(InputError, match="truncated or corrupt archive"):
        _download(server, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_offline_is_one_line_error(tmp_path):
    with pytest.raises(InputError, match="cannot reach the server"):
        cryoppp.download(10017, tmp_path, base_url="http://127.0.0.1:9", progress=False,
                         timeout_s=2)


@pytest.mark.parametrize("kind", ["parent", "absolute", "symlink", "hardlink"])
def test_malicious_archive_is_refused(server, tmp_path, kind):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        ok = tarfile.TarInfo("10017/micrographs/a.mrc")
        ok.size = 4
        tar.addfile(ok, io.BytesIO(b"abcd"))
        bad = tarfile.TarInfo({"parent": "10017/../../evil.txt", "absolute": "/evil.txt",
                               "symlink": "10017/link", "hardlink": "10017/hard"}[kind])
        if kind == "symlink":
            bad.type, bad.linkname = tarfile.SYMTYPE, "/etc/passwd"
        elif kind == "hardlink":
            bad.type, bad.linkname = tarfile.LNKTYPE, "10017/micrographs/a.mrc"
        else:
            bad.size = 4
        tar.addfile(bad, io.BytesIO(b"evil") if bad.isfile() else None)
    server.files["/cryoppp/10017.tar.gz"] = buffer.getvalue()
    root = tmp_path / "root"
    with pytest.raises(InputError, match="unsafe archive member refused"):
        _download(server, root)
    assert list(root.iterdir()) == []                      # nothing half-extracted, no archive
    assert not (tmp_path / "evil.txt").exists()


def test_lite_uses_its_own_url_and_folder(server, tmp_path):
    server.files["/lite/10017.tar.gz"] = _tar_gz({"micrographs/a.jpg": b"\xff\xd8jpg"})
    folder = cryoppp.download(10017, tmp_path, base_url=server.url, progress=False, lite=True,
                              lite_base_url=server.url.replace("/cryoppp", "/lite"))
    assert folder == tmp_path / "10017_lite" and (folder / "micrographs/a.jpg").is_file()
