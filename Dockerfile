# syntax=docker/dockerfile:1
# One image for every riskmesh server. Each Kubernetes Deployment picks its server with
# `command: ["riskmesh-<server>"]` (gateway, encryption, intersection, resharing, lasso,
# crypto-worker, and the web console riskmesh-console: the console scripts of pyproject.toml). No keys, certificates or data are baked in:
# certificates arrive as Secrets, the config as a ConfigMap, state on volumes.
#
#   make image        (podman; see services/tools/containers.py)
#   docker build -t registry.example.org/riskmesh:0.1.0 .
#
# The image runs as uid 10001 on a read-only root filesystem: the only writable paths
# are the state directory and /tmp, which the Deployments mount as volumes.
#
# Base image, pinned by digest. To refresh it (a new Python patch or Debian security
# release), on a machine that reaches Docker Hub:
#   podman pull docker.io/library/python:3.11-slim-bookworm
#   podman image inspect --format '{{.Digest}}' docker.io/library/python:3.11-slim-bookworm
# (or `skopeo inspect --format '{{.Digest}}' docker://docker.io/library/python:3.11-slim-bookworm`),
# put the new sha256 below, run `make image test-containers` and commit. Where no
# registry is reachable, `make image` builds FROM a local Debian base instead
# (services/tools/containers.py, debootstrap) by passing --build-arg PYTHON_IMAGE.
ARG PYTHON_IMAGE=docker.io/library/python:3.11-slim-bookworm@sha256:a36c24f9cbdf4fd0f52d67f0823eeac19c2028c637cecc392d97f980d4fec56b

# --- build: install the locked dependencies and the project into a virtualenv -------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# Dependencies first (exact versions and hashes, no resolver): this layer is cached until
# the lock files change. Every locked package ships a manylinux wheel; no compiler needed.
# An intercepting HTTPS proxy's CA bundle, when the build host has one, comes in as the
# build secret `ca-bundle`: mounted for these RUN steps only, never copied into a layer.
# The runtime venv gets no pip or setuptools of its own: the build venv's pip installs into it.
COPY requirements.lock requirements-build.lock ./
RUN --mount=type=secret,id=ca-bundle,required=false \
    if [ -s /run/secrets/ca-bundle ]; then export PIP_CERT=/run/secrets/ca-bundle; fi \
 && python -m venv /opt/build \
 && /opt/build/bin/pip install --no-deps --require-hashes --only-binary=:all: -r requirements-build.lock \
 && python -m venv --without-pip /opt/riskmesh \
 && /opt/build/bin/pip --python /opt/riskmesh/bin/python install --no-deps --require-hashes --only-binary=:all: -r requirements.lock
# Then the project itself, built into a wheel by the locked build tools (generated code
# in riskmesh/v1 is committed, so no protoc run) and installed without its dependencies.
COPY pyproject.toml README.md ./
COPY riskmesh ./riskmesh
COPY services ./services
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /tmp/dist . \
 && /opt/build/bin/pip --python /opt/riskmesh/bin/python install --no-deps /tmp/dist/riskmesh-*.whl \
 && /opt/riskmesh/bin/python -m compileall -q /opt/riskmesh

# --- runtime: the virtualenv on a clean slim base, as a non-root user -----------------
FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 riskmesh \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin riskmesh \
 && mkdir -p /var/lib/riskmesh /etc/riskmesh \
 && chown 10001:10001 /var/lib/riskmesh
COPY --from=build /opt/riskmesh /opt/riskmesh
ENV PATH=/opt/riskmesh/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    OMP_NUM_THREADS=1 \
    OPENBLAS_NUM_THREADS=1 \
    MKL_NUM_THREADS=1 \
    RISKMESH_CONFIG=/etc/riskmesh/config/riskmesh.toml \
    RISKMESH_PKI_DIR=/etc/riskmesh/pki \
    RISKMESH_STATE_DIR=/var/lib/riskmesh \
    RISKMESH_BIND_HOST=0.0.0.0
USER 10001:10001
WORKDIR /var/lib/riskmesh
# mTLS ports (base 7100 + offset) and plaintext grpc.health.v1 ports (base + 10 + offset);
# the web console's HTTP and probe ports.
EXPOSE 7100-7105 7110-7115 8080 8090
# No default server: a Deployment sets `command: ["riskmesh-gateway"]` (or another
# server); run without one, the image prints the CLI's help.
CMD ["riskmesh", "--help"]
