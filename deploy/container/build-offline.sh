#!/bin/sh
# Build the gateway's image without a container registry: the base image comes from Debian's own packages
# (mmdebstrap: bookworm's python3 3.11 and ca-certificates, what python:3.11-slim-bookworm is made of), then
# the repository's Dockerfile is built on it, unchanged, with --build-arg BASE=<that base>.
#
#   deploy/container/build-offline.sh [IMAGE [CONTEXT]]
#
# IMAGE defaults to localhost/forward-auth-gateway:dev, CONTEXT to the checkout this script is in.
# Needs root, podman and mmdebstrap (Debian: apt-get install podman buildah mmdebstrap), a Debian mirror
# (DEBIAN_MIRROR, DEBIAN_SECURITY_MIRROR) and PyPI. Behind a TLS-inspecting proxy, name the CA bundle pip
# must trust in BUILD_CA_BUNDLE (default: $PIP_CERT or $SSL_CERT_FILE when set): it is mounted over the
# build stage's bundle while RUN steps execute and never stored in the image.
#
# Caching, so only the first run downloads Debian packages: the base root filesystem is kept as a tarball under
# ${XDG_CACHE_HOME:-~/.cache}/forward-auth-gateway, named by a hash of everything that shapes it, and is
# rebuilt when older than BASE_MAX_AGE_DAYS (7: security updates); the imported base image is reused while
# it carries that hash. The image itself is built afresh (about 15 s) without a layer cache, which would
# keep an image per stage per build; tests/deploy/test_image.py reuses an image of an unchanged context.
#
# Builds use chroot isolation and the host's network (--isolation=chroot --network=host): they need no
# network namespace set-up, so they work in VMs and CI containers where podman's default isolation does not.
set -eu

IMAGE=${1:-localhost/forward-auth-gateway:dev}
CONTEXT=${2:-$(cd "$(dirname "$0")/../.." && pwd)}
BASE_IMAGE=${BASE_IMAGE:-localhost/debian-python:bookworm}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DEBIAN_SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
BASE_MAX_AGE_DAYS=${BASE_MAX_AGE_DAYS:-7}
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/forward-auth-gateway
BUILD_CA_BUNDLE=${BUILD_CA_BUNDLE:-${PIP_CERT:-${SSL_CERT_FILE:-}}}

# python3-venv: `python3 -m venv` with pip (the build stage); passwd: useradd/groupadd (the runtime stage).
# Both stages of the Dockerfile start from this one base, as they do from python:3.11-slim-bookworm.
PACKAGES=python3,python3-venv,ca-certificates,passwd
# merged /usr as Debian's own images have it, set up by mmdebstrap's hook rather than by the usrmerge
# package (which would pull in all of perl); then what Debian's slim images leave out: documentation
# (copyright files stay), manual pages, translations.
set -- --variant=apt --include="$PACKAGES" --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --aptopt='APT::Install-Recommends "false"' \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/lintian/*' \
    bookworm
SOURCES="deb $DEBIAN_MIRROR bookworm main
deb $DEBIAN_MIRROR bookworm-updates main
deb $DEBIAN_SECURITY_MIRROR bookworm-security main"
KEY=$(printf '%s\n' "$@" "$SOURCES" | sha256sum | cut -c1-16)
TARBALL=$CACHE/debian-python-bookworm-$KEY.tar

mkdir -p "$CACHE"
find "$CACHE" -maxdepth 1 -name 'debian-python-bookworm-*.tar' -mtime "+$BASE_MAX_AGE_DAYS" -delete
if [ ! -s "$TARBALL" ]; then
    echo "building the base root filesystem with mmdebstrap ($TARBALL)" >&2
    rm -f "$CACHE"/debian-python-bookworm-*.tar  # older keys or ages: never used again
    mmdebstrap --quiet --format=tar "$@" "$TARBALL.partial" "$SOURCES"
    mv "$TARBALL.partial" "$TARBALL"
fi

if [ "$(podman image inspect --format '{{index .Labels "base-rootfs-key"}}' "$BASE_IMAGE" 2>/dev/null)" != "$KEY" ]
then
    echo "importing $TARBALL as $BASE_IMAGE" >&2
    podman import --quiet --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' \
        --change "LABEL base-rootfs-key=$KEY" "$TARBALL" "$BASE_IMAGE" >/dev/null
fi

# --format docker: the OCI image format has no HEALTHCHECK; --pull=never: the base is the local one.
podman build --quiet --layers=false --format docker --pull=never --isolation=chroot --network=host \
    --build-arg "BASE=$BASE_IMAGE" \
    ${BUILD_CA_BUNDLE:+--volume "$BUILD_CA_BUNDLE:/etc/ssl/certs/ca-certificates.crt:ro"} \
    --tag "$IMAGE" --file "$CONTEXT/Dockerfile" "$CONTEXT" >/dev/null
echo "$IMAGE"
