# syntax=docker/dockerfile:1
# laion-ingest: one image for the batch loader (`run`, a Kubernetes Indexed Job) and the `daemon`.
#
#   docker build -t laion-ingest:0.1.0 .
#   docker run --rm laion-ingest:0.1.0 run --source https://mirror/embeddings/ --target http://clickhouse:8123
#
# Two stages: the builder has compilers (for any dependency without a wheel on this platform) and builds a
# virtualenv; the runtime stage copies only that venv onto a clean slim image and runs as an unprivileged user.
#
# PYTHON_IMAGE is any Debian-family image whose `python` is CPython >= 3.11 with venv, e.g. the local base that
# deploy/container/build-local.sh makes where no registry is reachable. Behind a private index or a TLS-inspecting
# proxy, pass pip's settings as build secrets (never stored in a layer; both optional):
#   --secret id=pipconf,src=pip.conf   (read as PIP_CONFIG_FILE)   --secret id=pipca,src=ca.crt (for `cert =`)

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CONFIG_FILE=/run/secrets/pipconf
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first, from the metadata alone: this layer is reused while only our code changes.
COPY pyproject.toml README.md ./
RUN --mount=type=secret,id=pipconf --mount=type=secret,id=pipca \
    mkdir ingest && touch ingest/__init__.py \
 && pip install . \
 && pip uninstall -y laion-ingest
COPY ingest ./ingest
RUN --mount=type=secret,id=pipconf --mount=type=secret,id=pipca \
    pip install --no-deps . \
 && laion-ingest --help > /dev/null

FROM ${PYTHON_IMAGE} AS runtime
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="laion-ingest" \
      org.opencontainers.image.description="Streaming, exact, resumable loader of LAION CLIP embeddings into ClickHouse" \
      org.opencontainers.image.version="${VERSION}"
RUN groupadd --system --gid 10001 ingest \
 && useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home --shell /usr/sbin/nologin ingest \
 && mkdir -p /data \
 && chown 10001:10001 /data
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# Relative defaults (./laion-cache, ./laion-state, ./laion-db) land in /data: mount a volume here.
WORKDIR /data
USER 10001:10001
# The daemon's /healthz /readyz /metrics (`daemon --http-port`, default 9108).
EXPOSE 9108
# Meaningful for the daemon only (a `run` container serves no HTTP; Kubernetes ignores HEALTHCHECK and uses
# the Deployment's probes). slim has no curl: ask Python.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:9108/healthz', timeout=4).status != 200)"]
ENTRYPOINT ["laion-ingest"]
CMD ["--help"]
