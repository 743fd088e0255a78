#!/opt/registry/bin/python3
"""``wget`` for container health checks, so a compose file written for registry:3 (whose
image is Alpine-based, with busybox's wget) works with this image unchanged: the Dokploy
registry template checks health with ``wget -q --spider http://localhost:5000/``.

This image is built on ``scratch`` (no shell, no busybox), so this is a small wget of its own
covering what health checks use: ``-q``/``--quiet``, ``--spider`` (fetch, keep nothing),
``-O FILE`` / ``-O -`` (write the body there), ``-T SEC``/``--timeout=SEC``, ``-t N``/
``--tries=N``, ``--no-check-certificate`` and one http(s) URL. Any other option is refused
with exit 2 and a line naming it, never ignored. Exit status as busybox's wget: 0 for a 2xx
or 3xx answer (redirects are followed), 1 for an error status or no connection.
Standard library only.
"""

from __future__ import annotations

import shutil
import ssl
import sys
import urllib.error
import urllib.request
from typing import BinaryIO

DEFAULT_TIMEOUT_S = 10.0  # busybox waits 900 s; a health check has its own timeout anyway
VALUED = {"-O": "output", "-T": "timeout", "-t": "tries", "--output-document": "output",
          "--timeout": "timeout", "--tries": "tries"}
FLAGS = {"-q": "quiet", "--quiet": "quiet", "--spider": "spider",
         "--no-check-certificate": "insecure"}


class Usage(Exception):
    """A command line this wget does not take."""


def parse(argv: list[str]) -> tuple[dict[str, str | bool], str]:
    """(options, url) from ``argv``; raises Usage naming what it cannot take."""
    opts: dict[str, str | bool] = {}
    urls: list[str] = []
    args = iter(argv)
    for arg in args:
        name, eq, value = arg.partition("=")
        if arg in FLAGS:
            opts[FLAGS[arg]] = True
        elif name in VALUED and eq:
            opts[VALUED[name]] = value
        elif arg in VALUED:
            value = next(args, None)  # type: ignore[arg-type]
            if value is None:
                raise Usage(f"option {arg} needs a value")
            opts[VALUED[arg]] = value
        elif arg.startswith("-O") and len(arg) > 2:  # -Ofile, -O-
            opts["output"] = arg[2:]
        elif arg.startswith("-") and arg != "-":
            raise Usage(f"option {arg} is not supported by this image's wget")
        else:
            urls.append(arg)
    if len(urls) != 1 or not urls[0].startswith(("http://", "https://")):
        raise Usage("exactly one http:// or https:// URL is needed")
    return opts, urls[0]


def fetch(opts: dict[str, str | bool], url: str, out: BinaryIO) -> int:
    """Fetch ``url`` (with retries), write the body unless spidering; the exit status."""
    try:
        timeout = float(opts.get("timeout") or DEFAULT_TIMEOUT_S)
        tries = max(1, int(opts.get("tries") or 1))
    except ValueError:
        raise Usage("timeout and tries must be numbers") from None
    context = ssl._create_unverified_context() if opts.get("insecure") else None
    quiet = bool(opts.get("quiet"))
    error = ""
    for _ in range(tries):
        try:
            with urllib.request.urlopen(url, timeout=timeout, context=context) as resp:
                if not opts.get("spider"):
                    target = opts.get("output")
                    if target and target != "-":
                        with open(str(target), "wb") as f:
                            shutil.copyfileobj(resp, f)
                    else:
                        shutil.copyfileobj(resp, out)
            return 0
        except urllib.error.HTTPError as exc:
            error = f"server returned error: HTTP/1.1 {exc.code} {exc.reason}"
            exc.close()
            break  # an answer, not a transient failure: busybox does not retry it either
        except (OSError, ValueError) as exc:
            error = f"can't connect to {url}: {exc}"
    if not quiet or error:
        print(f"wget: {error}", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    try:
        opts, url = parse(sys.argv[1:] if argv is None else argv)
        return fetch(opts, url, sys.stdout.buffer)
    except Usage as exc:
        print(f"wget: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
