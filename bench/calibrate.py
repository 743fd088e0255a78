"""`python -m bench.calibrate`: how fast is the load generator alone?

Runs the benchmark's HTTP client against a trivial server (a thread here that discards
request bodies and answers GET with sendfile) for the three byte-heavy request shapes. If
these ceilings are well above what the registries reach, the client is not the bottleneck.
The sink shares the 2 cores with the client, as a registry would.
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

from .core import MiB
from .data import DataFile
from .http1 import Chunked, Connection

RECV = 1 * MiB


class Sink:
    """Keep-alive HTTP/1.1 sink: bodies (Content-Length or chunked) are read and dropped."""

    def __init__(self, data: DataFile) -> None:
        self.data = data
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = bytearray()
        scratch = bytearray(RECV)
        view = memoryview(scratch)

        def fill() -> bool:
            n = conn.recv_into(scratch)
            buf.extend(view[:n])
            return n > 0

        with conn:
            while True:
                while (end := buf.find(b"\r\n\r\n")) < 0:
                    if not fill():
                        return
                head = bytes(buf[:end]).decode("latin-1").lower()
                del buf[: end + 4]
                method = head.split(" ", 1)[0]
                if "transfer-encoding: chunked" in head:
                    while True:
                        while (i := buf.find(b"\r\n")) < 0:
                            fill()
                        size = int(bytes(buf[:i]).split(b";")[0], 16)
                        need = i + 2 + size + 2
                        while len(buf) < need:
                            fill()
                        del buf[:need]
                        if size == 0:
                            break
                else:
                    for line in head.split("\r\n"):
                        if line.startswith("content-length:"):
                            left = int(line.split(":")[1]) - len(buf)
                            if left <= 0:
                                del buf[: left + len(buf)]
                            else:
                                buf.clear()
                                while left > 0:
                                    left -= conn.recv_into(view, min(RECV, left))
                if method == "get":
                    size = self.data.size
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
                    conn.sendfile(self.data.file, 0, size)
                else:
                    conn.sendall(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.calibrate", description=__doc__)
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    size = args.size_mib * MiB
    with tempfile.TemporaryDirectory(prefix="bench-calibrate-") as tmp:
        data = DataFile(Path(tmp) / "data.bin", size)
        sink = Sink(data)
        body = data.slice(0, size)
        shapes = {
            "PUT with Content-Length (sendfile)": lambda c: c.request("PUT", "/", None, body),
            "PATCH chunked, 32 KiB chunks": lambda c: c.request(
                "PATCH", "/", None, Chunked(body, 32 * 1024)
            ),
            "GET, compared with the file (pull)": lambda c: c.request(
                "GET", "/", sink="compare", expect=body
            ),
            "GET, sha256 of the body (verify)": lambda c: c.request("GET", "/", sink="hash"),
        }
        print(f"client alone against a trivial sink, {args.size_mib} MiB, best of {args.rounds}")
        for name, call in shapes.items():
            best = 0.0
            for _ in range(args.rounds):
                with Connection("127.0.0.1", sink.port, timeout=120) as conn:
                    t0 = time.perf_counter()
                    resp = call(conn)
                    elapsed = time.perf_counter() - t0
                assert resp.status in (200, 201), resp.status
                best = max(best, size / elapsed / 1e6)
            print(f"  {name:<40} {best:8.0f} MB/s")
        sink.listener.close()
        data.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
