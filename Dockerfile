# syntax=docker/dockerfile:1
# One image for every riskmesh server. Each Kubernetes Deployment picks its server with
# `command: ["riskmesh-<server>"]` (gateway, encryption, intersection, resharing, lasso,
# and the web console riskmesh-console: the console scripts of pyproject.toml). No keys, certificates or data are baked in:
# certificates arrive as Secrets, the config as a ConfigMap, state on volumes.
#
#   docker build -t registry.example.org/riskmesh:0.1.0 .
#
# The image runs as uid 10001 on a read-only root filesystem: the only writable paths
# are the state directory and /tmp, which the Deployments mount as volumes.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: install the locked dependencies and the project into a virtualenv -------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/riskmesh
ENV PATH=/opt/riskmesh/bin:$PATH
WORKDIR /src
# Dependencies first (exact versions, no resolver): this layer is cached until the
# lock file changes. Every locked package ships a manylinux wheel; no compiler needed.
COPY requirements.lock ./
RUN pip install --no-deps -r requirements.lock
# Then the project itself (generated code in riskmesh/v1 is committed, so no protoc run).
COPY pyproject.toml README.md ./
COPY riskmesh ./riskmesh
COPY services ./services
RUN pip install --no-deps --no-build-isolation . \
 && python -m compileall -q /opt/riskmesh

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
    MPLCONFIGDIR=/tmp/matplotlib \
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
EXPOSE 7100-7104 7110-7114 8080 8090
# No default server: a Deployment sets `command: ["riskmesh-gateway"]` (or another
# server); run without one, the image prints the CLI's help.
CMD ["riskmesh", "--help"]
