"""Memory per HTTP/1.1 TLS transfer held open by libcurl, with pushcli's upload buffer
against libcurl's default, measured in the same run.

Over HTTP/1.1 every request in flight is a connection and an easy handle, so this is
what the 1,000,000-subscriber row's peak RSS grows with. Each case runs in its own
process (a fresh heap): it holds ``--transfers`` POSTs of a push-sized body open at
once against an nginx sink that answers after 150 ms, three rounds on the same
handles and connections, and prints the growth of its RSS per transfer.

    python bench/conn_memory.py [--transfers 300]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BODY = b"x" * 3_000  # about a push message's encrypted body
UPLOAD_BUFFER = {"libcurl default (64 KB)": None, "pushcli (16 KB)": 16 * 1024}


def rss_kb() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def hold_open(port: int, cert: str, transfers: int, upload_buffer: int | None) -> dict:
    """RSS growth per transfer (KB) with ``transfers`` POSTs in flight at once."""
    import pycurl

    handles = []
    for _ in range(transfers):
        curl = pycurl.Curl()
        curl.setopt(pycurl.URL, f"https://127.0.0.1:{port}/push")
        curl.setopt(pycurl.CAINFO, cert)
        curl.setopt(pycurl.HTTP_VERSION, pycurl.CURL_HTTP_VERSION_1_1)
        curl.setopt(pycurl.WRITEFUNCTION, len)
        if upload_buffer:
            curl.setopt(pycurl.UPLOAD_BUFFERSIZE, upload_buffer)
        handles.append(curl)
    multi = pycurl.CurlMulti()
    before = rss_kb()
    peak = before
    answered = 0
    for _ in range(3):  # the same handles and (kept-alive) connections each round
        for curl in handles:
            curl.setopt(pycurl.POSTFIELDS, BODY)
            multi.add_handle(curl)
        active = transfers
        while active:
            _, active = multi.perform()
            peak = max(peak, rss_kb())
            multi.select(0.01)
        while True:
            queued, ok, failed = multi.info_read()
            for curl in ok:
                answered += curl.getinfo(pycurl.RESPONSE_CODE) == 201
                multi.remove_handle(curl)
            for curl, *_ in failed:
                multi.remove_handle(curl)
            if not queued:
                break
    return {"kb_per_transfer": (peak - before) / transfers, "answered": answered}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--transfers", type=int, default=300)
    ap.add_argument("--child", nargs=3, metavar=("PORT", "CERT", "BUFFER"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        port, cert, buffer = args.child
        print(json.dumps(hold_open(int(port), cert, args.transfers, int(buffer) or None)))
        return
    from tests.support import echo_201, nginx_sink

    with tempfile.TemporaryDirectory() as tmp, \
            nginx_sink(Path(tmp), {"/": echo_201(150)}) as sink:
        results = {}
        for name, buffer in UPLOAD_BUFFER.items():
            out = subprocess.run(
                [sys.executable, __file__, "--transfers", str(args.transfers),
                 "--child", str(sink.port), str(sink.cert), str(buffer or 0)],
                capture_output=True, text=True, check=True)
            results[name] = json.loads(out.stdout)
    for name, figures in results.items():
        print(f"{name:<26} {figures['kb_per_transfer']:7.1f} KB a transfer in flight "
              f"({figures['answered']:,} answered 201)")
    base, ours = (results[name]["kb_per_transfer"] for name in UPLOAD_BUFFER)
    print(f"saved {base - ours:.1f} KB a transfer ({ours / base:.2f}x)")


if __name__ == "__main__":
    main()
