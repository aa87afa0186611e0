# syntax=docker/dockerfile:1
# The allotment image: one image for the operator, the injected sidecar and the CLI.
#
#   docker build -t ghcr.io/allotment-dev/allotment:0.1.0 .
#
# Used by manifests/deployment.yaml (the operator and its `allotment migrate` init container),
# by the sidecar the injection webhook adds (ALLOTMENT_SIDECAR_IMAGE, the same tag) and by
# manifests/sidecar-snippet.yaml. It runs as UID/GID 65532, as the manifests' securityContext
# asks, and needs no writable root filesystem (pip compiles the bytecode at build time).

FROM python:3.11-slim AS build
WORKDIR /src
# Only what `pip install .` packages (pyproject's package-dir): no tests, venvs or caches.
COPY pyproject.toml README.md ./
COPY src/allotment/__init__.py src/allotment/py.typed src/allotment/
COPY ledger ledger
COPY operator operator
COPY sidecar sidecar
COPY cli cli
COPY crds crds
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels allotment \
    && groupadd --gid 65532 allotment \
    && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin allotment
USER 65532:65532
# 9443: the operator's webhooks; 8080: its liveness; 8889: the sidecar's probe port (its API
# listens on 127.0.0.1:8888 only).
EXPOSE 9443 8080 8889
ENTRYPOINT ["allotment"]
CMD ["--help"]
