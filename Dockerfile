# syntax=docker/dockerfile:1
# triggerd container image: multi-stage, slim, non-root, read-only-root-filesystem friendly.
#   docker build -t triggerd .
#   docker run --read-only --tmpfs /tmp -v triggerd-state:/var/lib/triggerd \
#     -v "$PWD/config:/etc/triggerd:ro" -p 127.0.0.1:9464:9464 triggerd
# The install steps are the ones the test suite proves (tests/ops/test_dockerfile.py): a wheel
# of this checkout built from pyproject.toml, installed with its dependencies.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY triggerd ./triggerd
# wheels of triggerd and of every dependency (PostgreSQL driver included)
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[postgres]'

FROM ${PYTHON_IMAGE}
# installed from the builder's wheels only (no index, no compiler in this image): the versions
# are the ones resolved in the build stage, hence no pins here
# hadolint ignore=DL3013
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels 'triggerd[postgres]' \
    && mkdir -p /etc/triggerd /var/lib/triggerd \
    && chown 10001:10001 /var/lib/triggerd \
    && chmod 0700 /var/lib/triggerd
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TRIGGERD_CONFIG=/etc/triggerd/triggerd.yaml \
    TRIGGERD_STATE_DIR=/var/lib/triggerd \
    TRIGGERD_LOG_FORMAT=json \
    TRIGGERD_HTTP=0.0.0.0:9464
USER 10001:10001
WORKDIR /var/lib/triggerd
VOLUME ["/var/lib/triggerd"]
EXPOSE 9464
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["triggerd", "health"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["triggerd"]
CMD ["run"]
