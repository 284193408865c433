# syntax=docker/dockerfile:1
# One image, two entry points:
#   kopeck operator   (the Deployment; runs as the non-root user below)
#   kopeck probe      (the DaemonSet; runs as root with an explicit capability list set by
#                      deploy/base/node-probe.yaml, never privileged)
#
#   docker build -t kopeck:0.1.0 .

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# Build: kopeck's wheel and the wheels of all its dependencies.
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator/ operator/
COPY node-probe/ node-probe/
RUN pip wheel --wheel-dir /wheels .

# Runtime: the wheels installed offline into a slim Python, nothing else.
FROM ${PYTHON_IMAGE} AS runtime
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
RUN groupadd --system --gid 10001 kopeck \
 && useradd --system --uid 10001 --gid kopeck --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin kopeck
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels /wheels/kopeck-*.whl \
 && kopeck --help >/dev/null
USER 10001:10001
ENTRYPOINT ["kopeck"]
CMD ["operator"]
