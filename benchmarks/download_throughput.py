"""Download throughput: pipekit (md5 checks, atomic landing, frame list) against a plain
``requests`` streaming loop over the same URLs, from the local archive server.

The server runs in its own process (as a real archive would be) on 127.0.0.1. The frames
are one 10 MB FITS file hard-linked under N names: distinct frames to the network, cheap
on disk. Each run writes into a fresh folder; dirty pages are flushed (``os.sync``) between
runs, outside the timings, so no run pays for another's writeback.

    python benchmarks/download_throughput.py             # 200 frames of 10 MB
    python benchmarks/download_throughput.py --frames 50 --size-mb 4 --rounds 1

Target (issue 6): pipekit within 10% of the plain loop, md5 on. Two settings are measured:
raw loopback (CPU-bound on 2 cores, where md5 itself is the cost) and a paced link of
``--link-mb`` MB/s per download, standing in for the remote archive.
"""

import argparse
import concurrent.futures
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests
from astropy.io import fits

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipekit.archive import LCOArchive, download_frames  # noqa: E402

TOKEN_ENVVAR = "PIPEKIT_BENCH_ARCHIVE_TOKEN"
CHUNK = 1 << 20


def make_frames(folder, n, size_mb):
    """One ``size_mb`` MB FITS frame, hard-linked under ``n`` frame names."""
    side = int(np.sqrt(size_mb * 1e6 / 4))
    header = fits.Header()
    header["DATE-OBS"] = "2024-05-02T03:04:05.000"
    header["PROPID"] = "BENCH2024A-001"
    header["RLEVEL"] = 91
    header["OBJECT"] = "OGLE-2024-BLG-0034"
    header["FILTER"] = "ip"
    header["INSTRUME"] = "fa15"
    data = np.random.default_rng(1).normal(1000, 30, (side, side)).astype(np.float32)
    first = folder / "cpt1m010-fa15-20240502-0000-e91.fits"
    fits.PrimaryHDU(data, header=header).writeto(first)
    for i in range(1, n):
        os.link(first, folder / f"cpt1m010-fa15-20240502-{i:04d}-e91.fits")
    return first.stat().st_size


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(folder, port, page_size, bandwidth_mb=None):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    command = [sys.executable, "-m", "pipekit.testing.archive_server", str(folder),
               "--port", str(port), "--token-envvar", TOKEN_ENVVAR, "--page-size", str(page_size),
               "--lifetime", "1800"]
    if bandwidth_mb:
        command += ["--bandwidth-mb", str(bandwidth_mb)]
    proc = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            requests.get(url, timeout=1)
            return proc, url
        except requests.ConnectionError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the archive server did not start")


def plain_loop(urls, out, workers=1, md5=False):
    """What a user would write: stream each URL to a file, nothing else.

    With ``md5=True`` it also does pipekit's unavoidable work by hand: hash every chunk
    and fsync each file, without pipekit's temporary file, rename or frame list.
    """
    local = threading.local()

    def fetch(item):
        url, name = item
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        digest = hashlib.md5()
        with session.get(url, stream=True, timeout=(5, 60)) as resp:
            resp.raise_for_status()
            with open(out / name, "wb") as fh:
                for chunk in resp.iter_content(CHUNK):
                    if md5:
                        digest.update(chunk)
                    fh.write(chunk)
                if md5:
                    fh.flush()
                    os.fsync(fh.fileno())

    if workers == 1:
        for item in urls:
            fetch(item)
    else:
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            list(pool.map(fetch, urls))


def pipekit_run(archive, records, out, workers=1):
    result = download_frames(archive, records, out, out / "frame_list.txt",
                             max_workers=workers, progress=False)
    assert result.n_downloaded == len(records) and result.n_failed == 0, result.failures


def timed(label, fn, out, n_bytes):
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    os.sync()
    t0 = time.perf_counter()
    fn(out)
    seconds = time.perf_counter() - t0
    shutil.rmtree(out, ignore_errors=True)
    os.sync()
    return n_bytes / 1e6 / seconds


def measure(runs, rounds, out, total):
    """Each run ``rounds`` times, interleaved, so drifting load hits all alike."""
    rates = {label: [] for label in runs}
    for _ in range(rounds):
        for label, fn in runs.items():
            rates[label].append(timed(label, fn, out, total))
    return rates


def report(title, rates, pairs):
    print(title)
    best = {label: max(values) for label, values in rates.items()}
    for label, value in best.items():
        runs_text = ", ".join(f"{v:.0f}" for v in rates[label])
        print(f"  {label:32s} {value:7.0f} MB/s   (runs: {runs_text})")
    for ours, base in pairs:
        print(f"  ratio {ours} / {base}: {best[ours] / best[base]:.2f}  (target >= 0.90)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--size-mb", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--link-mb", type=float, default=50.0,
                        help="MB/s per download for the wide-area-link comparison (0: skip)")
    parser.add_argument("--workdir", default=None, help="default: a temporary folder")
    args = parser.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="pipekit-bench-dl-"))
    served = work / "served"
    served.mkdir(parents=True, exist_ok=True)
    size = make_frames(served, args.frames, args.size_mb)
    total = size * args.frames
    out = work / "out"
    os.environ[TOKEN_ENVVAR] = "bench-" + os.urandom(8).hex()
    print(f"download throughput: {args.frames} frames of {size / 1e6:.1f} MB "
          f"({total / 1e9:.2f} GB) from the local archive server (its own process), "
          f"best of {args.rounds}")
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}, "
          f"requests {requests.__version__}; pipekit = md5 check + temporary file + fsync "
          "+ rename + frame list")
    procs = []
    try:
        proc, url = start_server(served, free_port(), page_size=100)
        procs.append(proc)
        archive = LCOArchive(url, token_envvar=TOKEN_ENVVAR)
        records = archive.query("BENCH2024A-001", "2024-05-02", "2024-05-03", reduction_level=91)
        assert len(records) == args.frames, len(records)
        urls = [(r.url, r.filename) for r in records]
        runs = {
            "plain loop, 1 stream": lambda o: plain_loop(urls, o, 1),
            "plain + md5 + fsync, 1 stream": lambda o: plain_loop(urls, o, 1, md5=True),
            "pipekit, 1 worker": lambda o: pipekit_run(archive, records, o, 1),
            "plain loop, 4 threads": lambda o: plain_loop(urls, o, 4),
            "plain + md5 + fsync, 4 threads": lambda o: plain_loop(urls, o, 4, md5=True),
            "pipekit, 4 workers": lambda o: pipekit_run(archive, records, o, 4),
        }
        report("loopback, unthrottled (CPU-bound: md5 costs ~1.4 ms/MB of one core):",
               measure(runs, args.rounds, out, total),
               [("pipekit, 1 worker", "plain loop, 1 stream"),
                ("pipekit, 1 worker", "plain + md5 + fsync, 1 stream"),
                ("pipekit, 4 workers", "plain loop, 4 threads"),
                ("pipekit, 4 workers", "plain + md5 + fsync, 4 threads")])

        if args.link_mb:
            proc, link_url = start_server(served, free_port(), page_size=100,
                                          bandwidth_mb=args.link_mb)
            procs.append(proc)
            link_archive = LCOArchive(link_url, token_envvar=TOKEN_ENVVAR)
            link_records = link_archive.query("BENCH2024A-001", "2024-05-02", "2024-05-03",
                                              reduction_level=91)
            link_urls = [(r.url, r.filename) for r in link_records]
            runs = {
                "plain loop, 4 threads": lambda o: plain_loop(link_urls, o, 4),
                "pipekit, 4 workers": lambda o: pipekit_run(link_archive, link_records, o, 4),
            }
            report(f"through a {args.link_mb:g} MB/s-per-download link (as from a remote "
                   "archive):", measure(runs, args.rounds, out, total),
                   [("pipekit, 4 workers", "plain loop, 4 threads")])
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
