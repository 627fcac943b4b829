# syntax=docker/dockerfile:1
#
# The gateway's container image:  docker build -t forward-auth-gateway:0.1.0 .   (or podman build)
#
# Built and run by tests/deploy/test_image.py (GATEWAY_TEST_IMAGE=1), with podman: CI has no Docker engine
# and reaches no container registry, so deploy/container/build-offline.sh makes the base from Debian's
# packages (bookworm's python3 3.11, as in python:3.11-slim-bookworm) and builds this file on it with
# --build-arg BASE=localhost/debian-python:bookworm. The test runs the image with a read-only root
# filesystem as user 10001 and checks /healthz, /auth/check, this HEALTHCHECK and what is not inside.
# tests/deploy/test_install.py runs this file's install command in a fresh virtualenv; tests/deploy/test_k8s.py
# checks what Kubernetes relies on (user 10001, port 4180, the probes' paths).
#
# Two stages: the first builds a virtualenv in /opt/venv, the second copies only that venv onto the clean
# base, so no source tree, pip cache or build leftovers reach the image. Every dependency ships wheels for
# this platform (aiohttp, uvloop, psycopg2-binary, cryptography, ...), so no compiler is installed in
# either stage.

# Any Debian-based image with python3 3.11 on PATH (plus python3-venv and useradd, which the python images
# have); both stages must use the same one, since the venv links to its python3.
ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python3 -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY gateway ./gateway
COPY upstreams ./upstreams
# The production install (README: "Running it"): pip builds a wheel from these sources and installs it
# with the `speed` extra (uvloop) only; no test tools.
RUN pip install --no-cache-dir '.[speed]'

FROM ${BASE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /var/lib/gateway \
       --shell /usr/sbin/nologin gateway \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/gateway
COPY --from=build /opt/venv /opt/venv
# The data directory and working directory: the SQLite default (sqlite:///gateway.db) lands here. A volume,
# so it stays writable under --read-only (pass -v NAME:/var/lib/gateway to keep it); Kubernetes runs with a
# read-only root filesystem and PostgreSQL, and mounts nothing here.
VOLUME ["/var/lib/gateway"]
WORKDIR /var/lib/gateway
# Numeric, so Kubernetes' runAsNonRoot can verify it (deploy/k8s uses the same runAsUser/runAsGroup).
USER 10001:10001
EXPOSE 4180
# /healthz, the Kubernetes liveness and startup probes' path, on the port CMD listens on. Python, as the
# image has no curl. A container serving another port needs its own --health-cmd.
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:4180/healthz', timeout=2)"]
ENTRYPOINT ["gateway"]
# The gateway's default listen address is loopback; in a container it must be every interface. A command
# of your own (`serve --config FILE`, as Kubernetes runs it) replaces this, so the config's listen applies.
CMD ["serve", "--listen", "0.0.0.0:4180"]
