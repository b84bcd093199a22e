# magdi-dist for GPU clusters: a Ray cluster image (head and workers) and a `ray job submit` target.
# torch, DeepSpeed and torch_geometric share one CUDA (12.8): torch's cu128 wheels, DeepSpeed JIT-builds
# its ops with this image's nvcc, and torch_geometric needs no compiled extensions for GCNConv.
# Not built on the development machines (no Docker engine there); linted with hadolint in the tests.
FROM nvidia/cuda:12.8.1-cudnn-devel-ubuntu22.04

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    DS_BUILD_OPS=0 \
    TORCH_CUDA_ARCH_LIST="8.0;8.6;8.9;9.0"

# Apt versions float with the CUDA base image's Ubuntu point release; pinning them would break the
# build on every base refresh.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3.11-dev \
       build-essential git libaio-dev openssh-client rsync wget \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv "$VIRTUAL_ENV"

RUN pip install --upgrade "pip==24.3.1" \
    && pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"

RUN pip install "deepspeed==0.19.8" "torch_geometric==2.8.1" "ray[default,data,train]==2.60.0" \
       "transformers==5.23.0" "mlflow==3.17.2" "peft==0.21.2" "safetensors==0.8.0" \
       "pydantic==2.14.4" "typer==0.29.2" "pyarrow==25.0.1" "sympy==1.14.0" \
       "math-verify==0.9.0" "latex2sympy2_extended==1.11.0" "antlr4-python3-runtime==4.13.2"

WORKDIR /app
COPY pyproject.toml README.md ./
COPY magdi_dist ./magdi_dist
COPY ray_jobs ./ray_jobs
COPY ds_configs ./ds_configs
COPY configs ./configs
RUN pip install --no-deps -e .

# Ray's dashboard and client ports, for a head node started from this image.
EXPOSE 6379 8265 10001
CMD ["magdi-dist", "--help"]
