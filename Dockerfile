# syntax=docker/dockerfile:1
# One image for every role: `aggregate` (the default command, so users of the Go worker can swap
# the image and keep their env), `report` (the per-pod sidecar), `wait` and `purge` (Job mode).
# tests/test_image_build.py checks this file's invariants and runs docker/build-venv.sh, the
# builder's only build step, so a careless edit fails CI even without a Docker engine.

# Pinned by minor version; pass a digest (python:3.11-slim-bookworm@sha256:...) for byte-exact
# rebuilds. Both stages must use the same image: the venv links to its interpreter by path.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PIP_NO_INPUT=1
WORKDIR /src
# The context is an allow-list (.dockerignore): sources, metadata, constraints, the build script.
COPY . /src
# The wheel of this project plus its runtime dependencies (no test or demo extras), pinned by
# constraints.txt, into /opt/cache-buster; .pyc files are compiled now, since the runtime venv
# is read-only to the process.
RUN --mount=type=cache,target=/root/.cache/pip \
    sh /src/docker/build-venv.sh /src /opt/cache-buster

FROM ${PYTHON_IMAGE} AS runtime
ARG PYTHON_IMAGE
ARG VERSION=0.1.0
ARG REVISION=""
ARG SOURCE=""
LABEL org.opencontainers.image.title="cache-buster" \
      org.opencontainers.image.description="Purge a CDN exactly once after a Kubernetes rollout completes, across a cluster group." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
# Nothing installs packages at runtime: drop the base image's installers (and their CVEs), and
# add a fixed numeric user. Kubernetes' runAsNonRoot can verify only a numeric USER.
RUN python -m pip uninstall --yes --quiet pip setuptools wheel \
    && groupadd --system --gid 65532 cache-buster \
    && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin cache-buster
COPY --from=builder /opt/cache-buster /opt/cache-buster
ENV PATH=/opt/cache-buster/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# 9102: the aggregator's Prometheus metrics (METRICS_PORT). 9901: the reporter's liveness
# endpoint (HEALTH_PORT).
EXPOSE 9102 9901
USER 65532:65532
WORKDIR /
# Exec form: the console script's shebang points at the venv's python, so no shell runs and
# SIGTERM reaches cache-buster itself (the reporter withdraws its record on it).
ENTRYPOINT ["cache-buster"]
CMD ["aggregate"]
