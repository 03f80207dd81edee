"""benchmarks/serve_load.py: its request body and its decompression bombs, and a toy-scale run against serve."""

import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import serve_load  # noqa: E402  (a script beside the others, not a package)


def test_a_bomb_is_a_valid_png_far_smaller_than_its_pixels():
    data = serve_load.bomb_png(3000, 2000, channels=4, depth=16)
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) < 200_000
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    assert (width, height, depth, colour) == (2000, 3000, 16, 6)
    idat_length = struct.unpack(">I", data[33:37])[0]
    raw = zlib.decompress(data[41:41 + idat_length])
    assert len(raw) == 3000 * (1 + 2000 * 4 * 2) and not raw.strip(b"\0")  # every row: a filter byte and zeros


def test_the_multipart_body_carries_each_file_whole_under_files():
    from email.parser import BytesParser

    body, content_type = serve_load.multipart([("a.png", b"\x00\x01\r\n\x02"), ("b.png", b"xyz")])
    message = BytesParser().parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    parts = message.get_payload()
    assert [p.get_filename() for p in parts] == ["a.png", "b.png"]
    assert [p.get_param("name", header="content-disposition") for p in parts] == ["files", "files"]
    assert [p.get_payload(decode=True) for p in parts] == [b"\x00\x01\r\n\x02", b"xyz"]


@pytest.mark.slow  # a server started, a few dozen requests and two bursts of bombs: about two minutes
def test_serve_load_at_a_toy_scale_answers_every_request_and_refuses_the_bombs(full_run, tmp_path):
    out = tmp_path / "load.json"
    proc = subprocess.run([sys.executable, "benchmarks/serve_load.py", "--models-dir", str(full_run), "--requests",
                           "8", "--concurrency", "2", "--burst", "6", "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    figures = json.loads(out.read_text())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert figures["errors"] == 0 and figures["requests"] == 8
    assert all(b["bombs_refused"] == 2 and b["good_like_predict"] == b["good"] for b in figures["bursts"])
