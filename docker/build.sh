#!/usr/bin/env bash
# Build the registry image from this checkout.
#
#   docker/build.sh [--tag TAG] [--base-image IMAGE] [--offline] [--debootstrap-base TAG]
#
#   --tag TAG               image to build (default registry-py:latest)
#   --base-image IMAGE      the build stage's base: any Debian-based image with python3.11
#                           and venv (default: the Dockerfile's, python:3.11-slim-bookworm)
#   --offline               build the wheels here (this Python, which must be 3.11 like
#                           the image's, and pip's index) so the docker build itself needs no
#                           network: no PyPI, no certificates inside the build
#   --debootstrap-base TAG  use TAG as the base image, first making it with debootstrap
#                           (Debian bookworm minbase + python3, python3-venv, ca-certificates,
#                           from the apt mirror this host uses) unless TAG already exists;
#                           needs root and debootstrap; nothing is pulled from a registry
#
# Environment: DOCKER (docker CLI, default docker), PYTHON (default python3), DEBIAN_MIRROR
# (default: the first Debian mirror in /etc/apt/sources.list*, else deb.debian.org).
# Uses the classic builder (DOCKER_BUILDKIT=0) with --network host, which works everywhere
# dockerd does; a plain `docker build -f docker/Dockerfile .` works too where buildx exists.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
docker="${DOCKER:-docker}"
python="${PYTHON:-python3}"
tag="registry-py:latest"
base=""
offline=0
debootstrap_base=""

while (($#)); do
    case "$1" in
    --tag) tag="$2"; shift 2 ;;
    --base-image) base="$2"; shift 2 ;;
    --offline) offline=1; shift ;;
    --debootstrap-base) debootstrap_base="$2"; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "build.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done

step() { printf '==> %s\n' "$*" >&2; }
cleanup=()
trap 'rm -rf ${cleanup[@]+"${cleanup[@]}"}' EXIT

debian_mirror() {
    if [[ -n "${DEBIAN_MIRROR:-}" ]]; then
        echo "$DEBIAN_MIRROR"
        return
    fi
    local found
    found="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
        /etc/apt/sources.list.d/*.sources 2>/dev/null |
        grep -v '^[[:space:]]*#' | grep -oE 'https?://[^[:space:]]+/debian/?' |
        grep -v -- '-security' | head -n 1 || true)"
    echo "${found:-http://deb.debian.org/debian}"
}

make_debootstrap_base() {
    local image="$1" root mirror
    if "$docker" image inspect "$image" >/dev/null 2>&1; then
        step "base image $image exists"
        return
    fi
    command -v debootstrap >/dev/null || { echo "build.sh: debootstrap missing (apt-get install debootstrap)" >&2; exit 1; }
    [[ "$(id -u)" == 0 ]] || { echo "build.sh: debootstrap needs root" >&2; exit 1; }
    mirror="$(debian_mirror)"
    root="$(mktemp -d /var/tmp/registry-base.XXXXXX)"
    cleanup+=("$root" "$root.log")
    step "debootstrap bookworm from $mirror into $root"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$root" "$mirror" >"$root.log" 2>&1 || {
        tail -n 30 "$root.log" >&2
        exit 1
    }
    # What an image never needs: package caches and lists, docs, man pages, translations.
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
        "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
        "$root"/usr/share/locale/*
    step "docker import $image"
    tar -C "$root" --numeric-owner -c . | "$docker" import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["/bin/bash"]' - "$image" >/dev/null
}

if [[ -n "$debootstrap_base" ]]; then
    make_debootstrap_base "$debootstrap_base"
    base="$debootstrap_base"
fi

# A private build context with only what the image needs (not .venv, .git, data, tests).
ctx="$(mktemp -d /var/tmp/registry-build.XXXXXX)"
cleanup+=("$ctx")
cp -r "$repo/pyproject.toml" "$repo/README.md" "$repo/registry" "$repo/docker" "$ctx/"
rm -rf "$ctx/docker/wheels"
find "$ctx" -name __pycache__ -type d -prune -exec rm -rf {} +
find "$ctx" -name '*.egg-info' -type d -prune -exec rm -rf {} +

if ((offline)); then
    step "wheels for the image ($("$python" --version 2>&1))"
    "$python" -m pip wheel --quiet --disable-pip-version-check \
        --wheel-dir "$ctx/docker/wheels" "$ctx" >&2
    find "$ctx" -maxdepth 1 -name build -type d -exec rm -rf {} +
fi

build_args=()
[[ -n "$base" ]] && build_args+=(--build-arg "BASE_IMAGE=$base")
step "docker build $tag${base:+ (base $base)}"
DOCKER_BUILDKIT=0 "$docker" build --network host --force-rm \
    ${build_args[@]+"${build_args[@]}"} -f "$ctx/docker/Dockerfile" -t "$tag" "$ctx" >&2
"$docker" image inspect -f '{{.Size}}' "$tag" |
    awk -v t="$tag" '{ printf "==> %s: %.1f MB\n", t, $1 / 1e6 }' >&2
