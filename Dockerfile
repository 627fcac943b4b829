# syntax=docker/dockerfile:1
#
# The gateway's container image:  docker build -t forward-auth-gateway:0.1.0 .
#
# NOT BUILT BY CI: the build machines have no Docker engine. tests/deploy/test_install.py instead runs this
# file's install command (the same `pip install --no-cache-dir '.[speed]'`, on the files the COPY lines
# and .dockerignore select) in a fresh virtualenv and runs the installed `gateway`, and
# tests/deploy/test_k8s.py checks what Kubernetes relies on (user 10001, port 4180, entrypoint).
#
# Two stages: the first builds a virtualenv in /opt/venv, the second copies only that venv onto a clean
# python:3.11-slim, so no source tree, pip cache or build leftovers reach the image. Every dependency
# ships wheels for this platform (aiohttp, uvloop, psycopg2-binary, cryptography, ...), so no compiler is
# installed in either stage.

FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY upstreams ./upstreams
# The production install (README: "Running it"); `speed` adds uvloop.
RUN pip install --no-cache-dir '.[speed]'

FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /var/lib/gateway \
       --shell /usr/sbin/nologin gateway \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/gateway
COPY --from=build /opt/venv /opt/venv
# A writable working directory for the embedded SQLite default (`docker run` on a laptop); Kubernetes
# runs with a read-only root filesystem and PostgreSQL.
WORKDIR /var/lib/gateway
# Numeric, so Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
# The default listen address is loopback: in a container set listen = "0.0.0.0:4180" in the config
# (deploy/k8s/base/gateway.toml does), GATEWAY_LISTEN, or `serve --listen 0.0.0.0:4180`.
EXPOSE 4180
# No HEALTHCHECK: Kubernetes uses its own probes (/healthz, /readyz), and the port depends on the config.
ENTRYPOINT ["gateway"]
CMD ["serve"]
