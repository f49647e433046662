# The worker fleet image: `worker --daemon` with ONNX Runtime's GPU build and the CUDA 13 / cuDNN 9
# libraries, all from PyPI wheels through infra/aws/install_runtime.sh (the script local setup
# runs for the CPU library, so the steps are the tested ones). VARIANT=cpu builds the CPU image.
#
#   docker build -f infra/aws/worker.Dockerfile -t lmaas-worker .              # GPU hosts
#   docker build -f infra/aws/worker.Dockerfile --build-arg VARIANT=cpu -t lmaas-worker:cpu .
ARG VARIANT=gpu

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p worker

FROM python:3.11-slim-bookworm AS runtime
ARG VARIANT
COPY infra/aws/install_runtime.sh /tmp/install_runtime.sh
RUN bash /tmp/install_runtime.sh --variant "$VARIANT" --dest /opt/lmaas/lib

FROM debian:bookworm-slim
ARG VARIANT
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=runtime /opt/lmaas/lib /opt/lmaas/lib
COPY --from=build /src/target/release/worker /usr/local/bin/worker
# The CUDA provider and the nvidia libraries are found through LD_LIBRARY_PATH; without a GPU the
# daemon logs why CUDA could not be registered and runs on CPU.
ENV ORT_DYLIB_PATH=/opt/lmaas/lib/libonnxruntime.so.1.31.1 \
    LD_LIBRARY_PATH=/opt/lmaas/lib \
    LMAAS_EXECUTION_PROVIDERS=cuda,cpu \
    LMAAS_MODEL_CACHE_DIR=/var/cache/lmaas \
    LMAAS_METRICS_ADDR=0.0.0.0:9102
RUN mkdir -p /var/cache/lmaas && chown 65534:65534 /var/cache/lmaas
USER 65534:65534
EXPOSE 9102
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/worker"]
CMD ["--daemon"]
