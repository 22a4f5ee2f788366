#!/usr/bin/env bash
# Builds the two base images that docker-compose.yml takes from a registry, for a machine that
# reaches none (the project's own CI machines): nothing here is needed where `docker pull` works.
#
#   docker/local-bases.sh           # once; images already present are kept
#   BASE_IMAGE=encoders-local/python:3.11-bookworm POSTGRES_IMAGE=encoders-local/postgres:16 make up
#
# - encoders-local/python:3.11-bookworm stands for python:3.11-slim-bookworm: Debian bookworm
#   (python3 3.11 with venv) made by debootstrap from the mirror apt already uses, trusting the
#   CA certificates this machine trusts (the package indexes are reached through them).
# - encoders-local/postgres:16 stands for pgvector/pgvector:pg16 (docker/postgres-local).
# Needs root, debootstrap and a running Docker engine; about 2 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."

BASE_IMAGE=${BASE_IMAGE:-encoders-local/python:3.11-bookworm}
POSTGRES_IMAGE=${POSTGRES_IMAGE:-encoders-local/postgres:16}
# The mirror this machine's apt is configured with (deb822 or one-line sources).
mirror=$(sed -n 's/^URIs: *\(\S*debian\)$/\1/p; s/^deb \(\S*debian\) bookworm .*/\1/p' \
    /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null | head -n 1 || true)
MIRROR=${DEBIAN_MIRROR:-${mirror:-http://deb.debian.org/debian}}

if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    echo "local-bases: $BASE_IMAGE is here"
else
    echo "local-bases: building $BASE_IMAGE from $MIRROR (debootstrap)"
    rootfs=$(mktemp -d)
    trap 'rm -rf "$rootfs"' EXIT
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
        bookworm "$rootfs" "$MIRROR" >/dev/null
    # The extra CAs this machine trusts (update-ca-certificates put them here): with them the
    # images reach the package indexes over the bridge network as this machine does.
    cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/" 2>/dev/null || true
    chroot "$rootfs" update-ca-certificates >/dev/null
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin
    # pip in a venv uses its own CA bundle unless told to use the system's.
    tar -C "$rootfs" -c . | docker import \
        --change 'ENV LANG=C.UTF-8 PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
        --change 'CMD ["python3"]' - "$BASE_IMAGE" >/dev/null
    rm -rf "$rootfs"
    trap - EXIT
fi

if docker image inspect "$POSTGRES_IMAGE" >/dev/null 2>&1; then
    echo "local-bases: $POSTGRES_IMAGE is here"
else
    echo "local-bases: building $POSTGRES_IMAGE (PostgreSQL 16 + pgvector from the pgserver wheel)"
    docker build -q --build-arg BASE_IMAGE="$BASE_IMAGE" -t "$POSTGRES_IMAGE" docker/postgres-local >/dev/null
fi
