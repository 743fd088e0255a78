#!/opt/registry/bin/python3
"""Container health check: GET /v2/ on this container's registry; exit 0 when it answers.

200 (no auth) and 401 (htpasswd auth on) both prove the server is up and routing, so both
count as healthy. The port comes from REGISTRY_HTTP_ADDR when set (":5000",
"0.0.0.0:5001"), else 5000; REGISTRY_HTTP_PREFIX and REGISTRY_HTTP_TLS_CERTIFICATE are
honoured the same way. A port set only in a mounted config file is not seen: set
REGISTRY_HTTP_ADDR too, or override the health check. Standard library only (the image
has no curl or wget).
"""

import os
import ssl
import sys
import urllib.error
import urllib.request

TIMEOUT_S = 4.0  # below the image's HEALTHCHECK --timeout=5s
HEALTHY = (200, 401)


def url() -> str:
    port = os.environ.get("REGISTRY_HTTP_ADDR", ":5000").rpartition(":")[2] or "5000"
    prefix = os.environ.get("REGISTRY_HTTP_PREFIX", "").strip("/")
    scheme = "https" if os.environ.get("REGISTRY_HTTP_TLS_CERTIFICATE") else "http"
    path = f"/{prefix}/v2/" if prefix else "/v2/"
    return f"{scheme}://127.0.0.1:{port}{path}"


def main() -> int:
    # The certificate names the public host, not 127.0.0.1: skip verification here.
    context = ssl._create_unverified_context()
    target = url()
    try:
        with urllib.request.urlopen(target, timeout=TIMEOUT_S, context=context) as resp:
            status = resp.status
    except urllib.error.HTTPError as exc:
        status = exc.code
        exc.close()
    except OSError as exc:
        print(f"unhealthy: GET {target}: {exc}", file=sys.stderr)
        return 1
    if status in HEALTHY:
        return 0
    print(f"unhealthy: GET {target} -> {status}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
