# wyoming-opentalker: Wyoming speech-to-text and text-to-speech for Home Assistant.
#
#   docker build -t wyoming-opentalker .                      # CUDA (Qwen engines + CPU ones)
#   docker build --build-arg VARIANT=cpu -t wyoming-opentalker:cpu .   # CPU default only
#
# The CUDA variant's PyTorch is the CUDA 12.6 build, the newest that still runs Pascal
# (GTX 1050 Ti); it needs an NVIDIA driver >= 525 on the host and the NVIDIA container
# toolkit. Models live in the /data volume. Two stages: nothing used to build is shipped.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG VARIANT=cuda
WORKDIR /src
COPY pyproject.toml README.md ./
COPY requirements ./requirements
COPY wyoming_opentalker ./wyoming_opentalker
COPY docker/install.sh ./docker/install.sh
RUN VARIANT="${VARIANT}" sh docker/install.sh /opt/venv

FROM ${PYTHON_IMAGE}
COPY --from=build /opt/venv /opt/venv
RUN useradd --uid 1000 --user-group --create-home --home-dir /data opentalker
ENV PATH=/opt/venv/bin:${PATH} \
    HF_HOME=/data/huggingface \
    ZEROCONF=true \
    PYTHONUNBUFFERED=1
USER 1000:1000
WORKDIR /data
VOLUME ["/data"]
EXPOSE 10300 10200
# Healthy when every running server answers describe within 1 s (Home Assistant's limit).
HEALTHCHECK --start-period=10m --interval=30s --timeout=5s \
    CMD ["python", "-m", "wyoming_opentalker.health"]
ENTRYPOINT ["wyoming-opentalker"]
