# One image for every participant of a cofe federation: aggregator and collaborators alike run
# `cofe start ...` in it; plan, certificates, data and outputs are mounted at run time.
#
#   cofe image build [--base-image IMG] [--extra-ca-bundle FILE]      (or: docker build -t cofe:0.1.0 .)
#
# Classic-builder syntax only (no BuildKit features), so Debian's and older engines build it too.
# The base image needs Debian's userland and Python 3.10-3.12 with venv (python:3.11-slim, or a
# local debootstrap image with python3, python3-venv and ca-certificates).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

# Behind a TLS-intercepting proxy (common in hospitals) pip fails with "self-signed certificate in
# certificate chain" unless the proxy's CA is trusted: docker/extra-ca/*.crt join the system store,
# and pip is told to use that store instead of its own bundle.
COPY docker/extra-ca/ /usr/local/share/ca-certificates/cofe-extra/
RUN update-ca-certificates >/dev/null

# OpenCV's wheel (through GaNDLF) links libGL, GLib and X11 even without a display.
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        libgl1 libglib2.0-0 libsm6 libice6 libxext6 libx11-6 libxcb1 >/dev/null \
 && rm -rf /var/lib/apt/lists/*
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/cofe/bin:$PATH

# The dependencies (~3.5 GB: torch with its CUDA wheels) come from pyproject.toml alone, in a layer
# of their own, so a change to cofe's code re-installs only cofe.
RUN python3 -m venv /opt/cofe && pip install -q --upgrade pip
COPY pyproject.toml /src/pyproject.toml
RUN python3 -c "import sys; \
from importlib import import_module as im; \
toml = im('tomllib') if sys.version_info >= (3, 11) else im('pip._vendor.tomli'); \
print('\n'.join(toml.load(open('/src/pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
 && pip install -q -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

COPY . /src
# (Build isolation on: the dependencies pin packaging 24.0, older than setuptools>=77 needs.)
RUN pip install -q --no-deps /src && rm -rf /src && cofe --version

# Participants run as this unprivileged user; `cofe start --container` may instead pass the host
# user's uid so files written to the mounted output folders belong to that user.
RUN useradd --uid 10001 --user-group --create-home --shell /usr/sbin/nologin cofe
ENV USER=cofe LOGNAME=cofe
USER 10001:10001
WORKDIR /home/cofe
LABEL org.opencontainers.image.title="cofe" \
      org.opencontainers.image.description="cofe participant image: OpenFL + GaNDLF federations" \
      cofe.image="participant"
ENTRYPOINT ["cofe"]
CMD ["--help"]
