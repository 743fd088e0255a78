"""The vocabulary shared by scenarios and the runner: profiles, figures, targets, results."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .cgroups import Limits
from .data import DataFile
from .servers import ServerSpec

MiB = 1024 * 1024


@dataclass(frozen=True)
class Profile:
    """Sizes and durations of every scenario; ``FULL`` is the real run, ``QUICK`` a smoke run."""

    name: str
    blob_size: int  # scenarios 1-4: one blob pushed / pulled
    stream_chunk: int  # chunk size of the chunked transfer encoding in push_streamed
    patch_chunk: int  # push_chunked: bytes per PATCH
    range_count: int  # pull: ranged GETs
    range_size: int
    conc_clients: tuple[int, ...]  # concurrent_push: client counts, one fresh server each
    conc_blob: int
    conc_step: int  # client i pushes the window [i*step, i*step+conc_blob) of the data file
    small_conns: tuple[int, ...]
    small_duration: float  # seconds per load-generator run
    docker_layer_mb: int  # docker_client: 5 layers of this many MB of random data
    request_timeout: float  # seconds per HTTP exchange of the byte-heavy scenarios

    @property
    def data_size(self) -> int:
        windows = (max(self.conc_clients) - 1) * self.conc_step + self.conc_blob
        return max(self.blob_size, windows)


FULL = Profile(
    name="full",
    blob_size=512 * MiB,
    # Docker's Go client copies the layer stream through a 32 KiB buffer into a chunked
    # writer, so its PATCH bodies arrive as 32 KiB chunks: mimic that.
    stream_chunk=32 * 1024,
    patch_chunk=16 * MiB,
    range_count=64,
    range_size=1 * MiB,
    conc_clients=(16, 64),
    conc_blob=32 * MiB,
    conc_step=8 * MiB,
    small_conns=(1, 32, 128),
    small_duration=5.0,
    docker_layer_mb=60,
    request_timeout=120.0,
)

QUICK = Profile(
    name="quick",
    blob_size=64 * MiB,
    stream_chunk=32 * 1024,
    patch_chunk=4 * MiB,
    range_count=16,
    range_size=1 * MiB,
    conc_clients=(16, 64),
    conc_blob=2 * MiB,
    conc_step=1 * MiB,
    small_conns=(1, 32),
    small_duration=1.0,
    docker_layer_mb=2,
    request_timeout=60.0,
)


@dataclass(frozen=True)
class Target:
    """A goal from the issues, on the medians.

    ``ratio``: ours/ref >= value; ``ratio_max``: ours/ref <= value (times); ``max``: ours <= value.
    """

    kind: str
    value: float

    def describe(self) -> str:
        if self.kind == "ratio":
            return f">={self.value:g}x ref"
        if self.kind == "ratio_max":
            return f"<={self.value:g}x ref"
        return f"<={self.value:g}"

    def met(self, ours: float | None, ref: float | None) -> bool | None:
        if ours is None:
            return None
        if self.kind == "max":
            return ours <= self.value
        if ref is None or ref == 0:
            return None
        if self.kind == "ratio_max":
            return ours / ref <= self.value
        return ours / ref >= self.value


@dataclass(frozen=True)
class Figure:
    key: str
    label: str
    unit: str
    better: str = "higher"  # or "lower"
    target: Target | None = None
    zero_ok: bool = False  # counts (errors) may be 0; everything else must be > 0


class Skip(Exception):
    """A scenario cannot run on this machine (a tool is missing); the message says why."""


@dataclass
class RoundResult:
    values: dict[str, float] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass
class Env:
    profile: Profile
    data: DataFile
    workdir: Path  # per run, deleted afterwards: server storage, config files
    cache_dir: Path  # kept between runs: the compiled load generator, docker build context
    verbose: bool = False
    limits: Limits = field(default_factory=Limits)  # what the limits scenario gives each side

    def log(self, msg: str) -> None:
        print(f"  {msg}", flush=True)


class Scenario(Protocol):
    name: str
    title: str
    default: bool  # part of a plain `python -m bench` run

    def figures(self, profile: Profile) -> list[Figure]: ...

    def prepare(self, env: Env) -> None:
        """Once per run, before any round; raise Skip when the scenario cannot run."""

    def run(self, env: Env, spec: ServerSpec) -> RoundResult:
        """One round against one fresh server (or several, one per phase).

        Raises on any error or wrong answer: such a round has no figures.
        """
        ...
