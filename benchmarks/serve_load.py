"""A bounded load test of `bonenet serve`: latency and memory under concurrent studies, bursts and bombs.

Starts `bonenet serve` on 127.0.0.1 (never another address), sends REQUESTS posts of one
3-image study, CONCURRENCY at a time, and reports errors, p50/p95 latency and the server
process's resident memory before and after (from /proc, Linux only). Then two bursts of BURST
requests at once, each with two decompression bombs among them (a 0.9 MB PNG of 30,000 × 30,000
8-bit pixels and a 16-bit RGBA PNG of 12,000 × 12,000): every good request must get the same answer
as before, every bomb a 4xx `{"error": ...}`, and the memory after the second burst is reported
beside the memory after the first.

    python benchmarks/serve_load.py --models-dir RUN [--study DIR] [--requests 200] [--concurrency 8] [--burst 50]

Without --study, three valid images of the run's own synthetic kind are made with
`make-synthetic` in a temporary folder.
"""

import argparse
import contextlib
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def rss_mb(pid):
    """Resident memory of a process in MB (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def multipart(files):
    """(body, content type) of a multipart/form-data post of [(name, bytes)] under field "files"."""
    boundary = uuid.uuid4().hex
    chunks = []
    for name, data in files:
        chunks += [f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
                   "Content-Type: application/octet-stream\r\n\r\n".encode(), data, b"\r\n"]
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


def post(url, body, content_type):
    """(seconds, HTTP status) of one request."""
    start = time.perf_counter()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except OSError:
        status = 0
    return time.perf_counter() - start, status


def bomb_png(rows, cols, channels=1, depth=8):
    """A valid PNG of rows × cols zero pixels, compressed row by row (never held whole in memory)."""
    import struct
    import zlib

    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    colour = {1: 0, 4: 6}[channels]
    header = struct.pack(">IIBBBBB", cols, rows, depth, colour, 0, 0, 0)
    packer, row = zlib.compressobj(9), b"\0" * (1 + cols * channels * depth // 8)
    body = b"".join(packer.compress(row) for _ in range(rows)) + packer.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def study_files(study):
    """Three image files: from `study` when it has three, else a fresh synthetic valid study."""
    if study is not None and len(list(Path(study).glob("*.png"))) < 3:
        print(f"{study} has fewer than three PNG views; using a synthetic study", file=sys.stderr)
        study = None
    if study is None:
        out = Path(tempfile.mkdtemp(prefix="bonenet-load-"))
        subprocess.run([sys.executable, "run_pipeline.py", "make-synthetic", "--out", str(out), "--studies-per-part",
                        "4"], cwd=REPO, check=True, capture_output=True)
        study = next(p for p in sorted((out / "MURA-v1.1" / "valid").rglob("study*")) if len(list(p.glob("*.png"))) >= 3)
    return [(p.name, p.read_bytes()) for p in sorted(Path(study).glob("*.png"))[:3]]


def _arguments(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", required=True)
    parser.add_argument("--study", help="a folder with at least three PNG views")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--burst", type=int, default=50, help="requests sent at once in each of two bursts")
    parser.add_argument("--out", help="write the figures as JSON here")
    return parser.parse_args(argv)


@contextlib.contextmanager
def serving(models_dir):
    """`bonenet serve` on a free loopback port, answering: yields (base URL, the server's pid)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "run_pipeline.py", "serve", "--models-dir", str(models_dir),
                               "--host", "127.0.0.1", "--port", str(port)], cwd=REPO)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(base + "/api/health", timeout=2).read()
                break
            except OSError:
                if server.poll() is not None:
                    sys.exit("serve exited before answering")
                time.sleep(1)
        yield base, server.pid
    finally:
        server.terminate()
        server.wait(timeout=30)


def steady_load(url, body, content_type, requests, concurrency, pid):
    """`requests` posts at `concurrency`, after a warm-up round: (latency and status per request, wall seconds,
    resident MB before and after, resident MB after each answer)."""
    # A first round at full concurrency: the worker threads' and allocator's start-up memory is not growth.
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(lambda _: post(url, body, content_type), range(2 * concurrency)))
    before = rss_mb(pid)
    start = time.perf_counter()
    trace = []  # resident memory after each answered request, to tell a plateau from a leak

    def one(_):
        result = post(url, body, content_type)
        trace.append(rss_mb(pid))
        return result

    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, range(requests)))
    return results, time.perf_counter() - start, before, rss_mb(pid), trace


def main(argv=None):
    args = _arguments(argv)
    with serving(args.models_dir) as (base, pid):
        body, content_type = multipart(study_files(args.study))
        url = base + "/api/predict"
        results, wall, before, after, trace = steady_load(url, body, content_type, args.requests, args.concurrency, pid)
        expected = json.loads(urllib.request.urlopen(urllib.request.Request(
            url, data=body, headers={"Content-Type": content_type}, method="POST"), timeout=300).read())
        bombs = [multipart([("bomb8.png", bomb_png(30_000, 30_000))]),
                 multipart([("bomb16.png", bomb_png(12_000, 12_000, channels=4, depth=16))])]
        bursts = [burst(url, (body, content_type), bombs, args.burst, expected, pid) for _ in range(2)]
    latencies = sorted(t for t, _ in results)
    errors = sum(status != 200 for _, status in results)
    figures = {
        "requests": args.requests, "concurrency": args.concurrency, "images_per_request": 3, "errors": errors,
        "p50_s": round(statistics.median(latencies), 3),
        "p95_s": round(latencies[int(0.95 * (len(latencies) - 1))], 3),
        "requests_per_s": round(args.requests / wall, 2),
        "rss_before_mb": round(before, 1), "rss_after_mb": round(after, 1), "rss_growth_mb": round(after - before, 1),
        "rss_by_quarter_mb": [round(trace[int(q * (len(trace) - 1))], 1) for q in (0.25, 0.5, 0.75, 1.0)],
        "bursts": bursts,
        "bomb_sizes_mb": [round(len(b) / 2**20, 2) for b, _ in bombs],
        "rss_growth_second_burst_mb": round(bursts[1]["rss_after_mb"] - bursts[0]["rss_after_mb"], 1),
    }
    print(json.dumps(figures, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2))
    bursts_ok = all(b["good_like_predict"] == b["good"] and b["bombs_refused"] == 2 for b in bursts)
    # The bound: memory grows by less than 100 MB over the 200 requests and from the first burst to the second.
    bounded = figures["rss_growth_mb"] < 100 and figures["rss_growth_second_burst_mb"] < 100
    return 0 if errors == 0 and bursts_ok and bounded else 1


def burst(url, good, bombs, size, expected, pid):
    """`size` requests at once, two of them bombs: how the good ones and the bombs were answered."""
    posts = [good] * (size - len(bombs)) + list(bombs)

    def send(payload):
        request = urllib.request.Request(url, data=payload[0], headers={"Content-Type": payload[1]}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=600) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    with ThreadPoolExecutor(size) as pool:
        answers = list(pool.map(send, posts))
    same = sum(status == 200 and [e.get("p_abnormal") for e in answer] == [e.get("p_abnormal") for e in expected]
               for status, answer in answers[:size - len(bombs)])
    refused = sum(400 <= status < 500 and list(answer) == ["error"] for status, answer in answers[size - len(bombs):])
    return {"good": size - len(bombs), "good_like_predict": same, "bombs_refused": refused,
            "bomb_answers": [answer.get("error") for _, answer in answers[size - len(bombs):]],
            "rss_after_mb": round(rss_mb(pid), 1)}


if __name__ == "__main__":
    sys.exit(main())
