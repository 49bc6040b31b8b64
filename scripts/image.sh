#!/usr/bin/env bash
# Build the ITX Triage image with podman where no registry is reachable (the project's test
# machines; /work/shared/TESTING-NOTES.md, "Containers"):
#   - the Dockerfile's python:3.11-slim-bookworm is replaced, through its PYTHON_IMAGE build
#     argument, by a Debian bookworm made with mmdebstrap and imported under a local name
#     (built once, then reused by name: a second build starts warm);
#   - this machine's pip configuration and CA bundle are mounted read-only into the build's
#     RUN steps, so pip reaches the index here and neither file ends up in the image.
# Usage: scripts/image.sh [TAG]   (default localhost/itx-triage:test)
# Installs podman, buildah, runc, mmdebstrap and uidmap with apt-get when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

TAG="${1:-localhost/itx-triage:test}"
BASE="${TRIAGE_STANDIN_BASE:-localhost/itx-triage-standin-base:bookworm}"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$PWD/scripts/podman/containers.conf}"

need_apt=()
for tool in podman buildah runc mmdebstrap newuidmap; do
    command -v "$tool" >/dev/null 2>&1 || need_apt+=("$tool")
done
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "image.sh: installing podman buildah runc mmdebstrap uidmap with apt-get" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq -o DPkg::Lock::Timeout=600 \
        podman buildah runc mmdebstrap uidmap >/dev/null
fi

if ! podman image exists "$BASE"; then
    echo "image.sh: making the stand-in base $BASE with mmdebstrap (once)" >&2
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    mmdebstrap --quiet --variant=minbase \
        --include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates \
        bookworm "$tmp/base.tar" http://deb.debian.org/debian
    # PATH as the official python image sets it; Debian's python3 is in /usr/bin.
    podman import --quiet \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["python3"]' \
        "$tmp/base.tar" "$BASE" >/dev/null
fi

mounts=()
[ -f /etc/pip.conf ] && mounts+=(-v /etc/pip.conf:/etc/pip.conf:ro)
[ -f /etc/ssl/certs/ca-certificates.crt ] && \
    mounts+=(-v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)

old="$(podman image inspect --format '{{.Id}}' "$TAG" 2>/dev/null || true)"
# --format docker keeps the HEALTHCHECK (OCI images have none); --network host: no bridge here.
podman build --format docker --network host "${mounts[@]}" \
    --build-arg "PYTHON_IMAGE=$BASE" -t "$TAG" -f Dockerfile .
# The image this tag named before, if the build replaced it: otherwise every rebuild after a
# code change leaves one more untagged image in the (shared) store. Refused, and left, when
# something still uses it.
new="$(podman image inspect --format '{{.Id}}' "$TAG")"
if [ -n "$old" ] && [ "$old" != "$new" ]; then
    podman rmi "$old" >/dev/null 2>&1 || true
fi
