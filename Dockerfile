# xpcnn: the `xpcnn` command with CuPy, on a CUDA *runtime* base (no compilers, no CUDA devel).
#
#   docker build -t xpcnn .
#   docker run --rm --gpus all -v "$PWD/mnist:/data:ro" -v "$PWD/ckpt:/checkpoints" \
#       xpcnn train --preset tutorial --device gpu
#
# Build arguments
#   BASE_IMAGE  a CUDA runtime image with a Debian-family distro (apt); python3 is installed
#               from the distro when the image has none. Its CUDA major must match CUPY_PACKAGE.
#   CUPY_PACKAGE  the CuPy wheel for that CUDA major; the project's `gpu` extra names
#               cupy-cuda12x, so with the default EXTRAS this is only a cross-check.
#   EXTRAS      the project extras to install. A CPU-only image: --build-arg EXTRAS=plots,images
#
# Package-index settings (a mirror, a proxy, a private CA) go in as a build secret named
# `pip.conf`; it is mounted only while pip runs and never stored in a layer:
#   docker build --secret id=pip.conf,src="$HOME/.config/pip/pip.conf" -t xpcnn .
# Without the secret pip uses PyPI.

ARG BASE_IMAGE=nvidia/cuda:12.6.3-runtime-ubuntu24.04

# ---------------------------------------------------------------------------------------
# build: a venv in /opt/xpcnn with the project and its dependencies, then pip removed.
FROM ${BASE_IMAGE} AS build
ARG EXTRAS=gpu,plots,images
ARG CUPY_PACKAGE=cupy-cuda12x
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# Versions come from whatever distro BASE_IMAGE is, so they cannot be pinned here.
# hadolint ignore=DL3008
RUN if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            python3 python3-venv \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -m venv /opt/xpcnn

WORKDIR /src
COPY pyproject.toml README.md ./
COPY xpcnn/ ./xpcnn/
RUN --mount=type=secret,id=pip.conf,target=/run/secrets/pip.conf \
    export PIP_CONFIG_FILE=/run/secrets/pip.conf \
    && /opt/xpcnn/bin/pip install --no-cache-dir ".[${EXTRAS}]" \
    && case ",${EXTRAS}," in \
        *,gpu,*) /opt/xpcnn/bin/pip show "${CUPY_PACKAGE}" >/dev/null \
            || { echo "the gpu extra did not install ${CUPY_PACKAGE}: check CUPY_PACKAGE" >&2; exit 1; } ;; \
    esac \
    && /opt/xpcnn/bin/python -m pip uninstall --yes --quiet pip setuptools wheel

# ---------------------------------------------------------------------------------------
# runtime: the same base, python3 only (no pip, venv module or build context), the venv.
FROM ${BASE_IMAGE}
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Versions come from whatever distro BASE_IMAGE is, so they cannot be pinned here.
# Ubuntu images ship a user `ubuntu` with uid 1000: it is removed so xpcnn can have the uid.
# hadolint ignore=DL3008
RUN if ! command -v python3 >/dev/null; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && old_user="$(getent passwd 1000 | cut -d: -f1)" \
    && if [ -n "${old_user}" ]; then userdel --remove "${old_user}" 2>/dev/null || userdel "${old_user}"; fi \
    && old_group="$(getent group 1000 | cut -d: -f1)" \
    && if [ -n "${old_group}" ]; then groupdel "${old_group}"; fi \
    && groupadd --gid 1000 xpcnn \
    && useradd --uid 1000 --gid 1000 --create-home --home-dir /home/xpcnn --shell /bin/bash xpcnn \
    && mkdir -p /data /checkpoints \
    && chown xpcnn:xpcnn /data /checkpoints

COPY --from=build /opt/xpcnn /opt/xpcnn

ENV VIRTUAL_ENV=/opt/xpcnn \
    PATH=/opt/xpcnn/bin:${PATH} \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MPLBACKEND=Agg \
    XPCNN_DATA_DIR=/data

# Numeric, so that runAsNonRoot-style checks can verify it without reading /etc/passwd.
USER 1000:1000
WORKDIR /home/xpcnn
VOLUME ["/data", "/checkpoints"]
ENTRYPOINT ["xpcnn"]
CMD ["info"]
