"""ADBTransport cost through the REAL adb server and the stand-in device (tests/adb_standin.py).

Measures, on loopback (so the link is not the bottleneck; a phone over USB 2 / Wi-Fi is slower):
* run round trip: `true` through ``shell,v2,raw:`` (median and p95 of N), incl. ``host:transport``;
* push throughput of a 16 MB file (sync SEND, 64 KiB DATA chunks) and the cost of a push skipped by sha256;
* pull throughput of the same file (sync RECV).

Run:  .venv/bin/python tests/perf/bench_adb_transport.py [--runs 50] [--mb 16]
Writes reports/adb_transport.md and prints the same table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from device_agents.adb import ADBTransport  # noqa: E402
from tests.adb_standin import AdbdStandin, AdbServer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--mb", type=int, default=16)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        dev = AdbdStandin(tmp / "phone")
        srv = AdbServer(tmp / "home")
        try:
            srv.connect(dev.serial)
            t = ADBTransport(serial=dev.serial, adb_port=srv.port)
            t.run("true", timeout=20)
            rtt = []
            for _ in range(args.runs):
                t0 = time.perf_counter()
                t.run("true", timeout=20)
                rtt.append((time.perf_counter() - t0) * 1000)
            blob = tmp / "blob.bin"
            blob.write_bytes(os.urandom(args.mb << 20))
            t0 = time.perf_counter()
            t.push(blob, "/data/local/tmp/blob.bin", timeout=120)
            push_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            skipped = not t.push(blob, "/data/local/tmp/blob.bin", timeout=120)
            skip_ms = (time.perf_counter() - t0) * 1000
            t0 = time.perf_counter()
            t.pull("/data/local/tmp/blob.bin", tmp / "back.bin", timeout=120)
            pull_s = time.perf_counter() - t0
            assert (tmp / "back.bin").read_bytes() == blob.read_bytes()
        finally:
            srv.stop()
            dev.stop()
    rtt.sort()
    rows = [
        ("run `true` round trip, median (ms)", f"{statistics.median(rtt):.1f}"),
        ("run `true` round trip, p95 (ms)", f"{rtt[int(0.95 * (len(rtt) - 1))]:.1f}"),
        (f"push {args.mb} MB (incl. 2 sha256sum runs) (s)", f"{push_s:.2f}"),
        ("push throughput (MB/s)", f"{args.mb / push_s:.0f}"),
        ("push skipped by sha256 (ms)", f"{skip_ms:.0f}" + ("" if skipped else " (NOT skipped!)")),
        (f"pull {args.mb} MB (s)", f"{pull_s:.2f}"),
        ("pull throughput (MB/s)", f"{args.mb / pull_s:.0f}"),
    ]
    text = ["# ADB transport cost (real adb server + stand-in device, loopback)", "",
            f"Command: `.venv/bin/python tests/perf/bench_adb_transport.py --runs {args.runs} --mb {args.mb}`", "",
            "| measure | value |", "| --- | --- |", *[f"| {k} | {v} |" for k, v in rows], ""]
    out = ROOT / "reports" / "adb_transport.md"
    out.write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
