"""docker_client: a real client. `docker push`, `docker rmi`, `docker pull` of a 5-layer image.

The image is made offline once and cached in dockerd between runs: `docker import` of a
generated rootfs tar (layer 1) plus a Dockerfile whose four COPY steps add layers of random
data, built with the classic builder (DOCKER_BUILDKIT=0) and --network host. After each pull
the image is tagged back under its cache name, so the next round pushes the same image.
Correctness: the digest `docker push` printed is the one the registry serves for the tag,
and the pulled image has the original image ID (= the config digest).
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import tarfile
import time

from . import oci
from .core import Env, Figure, Profile, RoundResult, Skip, Target
from .servers import ServerSpec, open_server

LAYERS = 5
REPO = "bench/img5"
DIGEST_LINE = re.compile(r"digest: (sha256:[0-9a-f]{64}) size: \d+")


def docker(*args: str, timeout: float = 600, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        ["docker", *args], check=False, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )  # fmt: skip
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip()[-800:]
        raise RuntimeError(f"docker {' '.join(args[:2])} failed ({proc.returncode}): {tail}")
    return proc.stdout


def dockerd_problem() -> str | None:
    """None when a docker client can talk to a daemon, else why not."""
    try:
        docker("version", "--format", "{{.Server.Version}}", timeout=20)
    except FileNotFoundError:
        return "the docker CLI is not installed (apt-get install -y docker.io)"
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        return f"dockerd is not reachable: {str(exc).splitlines()[-1]}"
    return None


class DockerClientScenario:
    name = "docker_client"
    title = "docker push/pull"
    default = True

    def figures(self, profile: Profile) -> list[Figure]:
        mb = profile.docker_layer_mb * LAYERS
        return [
            Figure("push_s", f"docker push {LAYERS} layers ~{mb} MB", "s", "lower",
                   target=Target("ratio_max", 1.0)),
            Figure("pull_s", f"docker pull {LAYERS} layers ~{mb} MB", "s", "lower",
                   target=Target("ratio_max", 1.25)),
            Figure("rss", "peak memory (PSS)", "MB", "lower"),
        ]  # fmt: skip

    def prepare(self, env: Env) -> None:
        problem = dockerd_problem()
        if problem:
            raise Skip(problem)
        mb = env.profile.docker_layer_mb
        self.image = f"registry-bench/img5:{mb}mb"
        self.context = env.cache_dir / f"docker-{mb}mb"
        self.image_id = self._ensure_image(env)

    def _image_id(self, ref: str) -> str | None:
        try:
            return docker("image", "inspect", "--format", "{{.Id}}", ref, timeout=60).strip()
        except RuntimeError:
            return None

    def _ensure_image(self, env: Env) -> str:
        found = self._image_id(self.image)
        if found:
            return found
        mb = env.profile.docker_layer_mb
        env.log(f"building {self.image} ({LAYERS} layers of {mb} MB), cached for later runs")
        ctx = self.context
        ctx.mkdir(parents=True, exist_ok=True)
        size = mb * 1_000_000
        rootfs = ctx / "rootfs.tar"
        with tarfile.open(rootfs, "w") as tar:
            for d in ("bin", "etc", "tmp", "data"):
                info = tarfile.TarInfo(d)
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            for name, data in (("etc/hostname", b"bench\n"), ("data/l1.bin", os.urandom(size))):
                info = tarfile.TarInfo(name)
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
        lines = [f"FROM {self.image}-base"]
        for i in range(2, LAYERS + 1):
            (ctx / f"l{i}.bin").write_bytes(os.urandom(size))
            lines.append(f"COPY l{i}.bin /data/l{i}.bin")
        (ctx / "Dockerfile").write_text("\n".join(lines) + "\n")
        (ctx / ".dockerignore").write_text("rootfs.tar\n")
        docker("import", str(rootfs), f"{self.image}-base", timeout=600)
        docker(
            "build", "--network", "host", "-q", "-t", self.image, str(ctx),
            timeout=1200, env={"DOCKER_BUILDKIT": "0"},
        )  # fmt: skip
        # Untag the base: the image must vanish entirely on `docker rmi`, or the pull
        # would find layer 1 locally and skip it.
        docker("rmi", f"{self.image}-base", timeout=120)
        image_id = self._image_id(self.image)
        if not image_id:
            raise Skip(f"built {self.image} but cannot inspect it")
        return image_id

    def run(self, env: Env, spec: ServerSpec) -> RoundResult:
        timeout = 1800 if env.profile.name == "full" else 300
        self.image_id = self._ensure_image(env)  # a failed round may have lost it
        with open_server(spec, env.workdir) as srv:
            ref = f"127.0.0.1:{srv.port}/{REPO}:latest"
            docker("tag", self.image, ref, timeout=60)
            restored = False
            try:
                t0 = time.perf_counter()
                out = docker("push", ref, timeout=timeout)
                push_s = time.perf_counter() - t0
                m = DIGEST_LINE.search(out)
                if not m:
                    raise oci.ProtocolError(f"docker push printed no digest: {out[-300:]}")
                if out.count(": Pushed") != LAYERS:  # else it measured no upload at all
                    raise oci.ProtocolError(f"docker push uploaded not {LAYERS} layers: {out}")
                with srv.connect(30) as conn:
                    r = conn.request(
                        "HEAD", f"/v2/{REPO}/manifests/latest", {"Accept": oci.SCHEMA2}
                    )
                oci.expect(r, 200, what="HEAD pushed manifest")
                if r.header("docker-content-digest") != m.group(1):
                    raise oci.ProtocolError("registry serves a different manifest digest")
                t0 = time.perf_counter()
                docker("rmi", ref, self.image, timeout=600)
                rmi_s = time.perf_counter() - t0
                t0 = time.perf_counter()
                out = docker("pull", ref, timeout=timeout)
                pull_s = time.perf_counter() - t0
                if out.count(": Pull complete") != LAYERS:  # layers found locally
                    raise oci.ProtocolError(f"docker pull fetched not {LAYERS} layers: {out}")
                pulled = self._image_id(ref)
                docker("tag", ref, self.image, timeout=60)
                restored = True
                if pulled != self.image_id:
                    raise oci.ProtocolError(f"pulled image id {pulled} != {self.image_id}")
                peak = srv.rss.peak_mb
            finally:
                if not restored and self._image_id(ref):
                    subprocess.run(
                        ["docker", "tag", ref, self.image], check=False, capture_output=True
                    )
                subprocess.run(
                    ["docker", "rmi", ref], check=False, capture_output=True, timeout=600
                )
        return RoundResult({"push_s": push_s, "pull_s": pull_s, "rss": peak}, {"rmi_s": rmi_s})
