# lenslab: one image for the web processes and the workers (see docker-compose.yml).
FROM python:3.11-slim

# The CPU build of PyTorch by default; a GPU image passes e.g.
#   --build-arg TORCH_SPEC="torch==2.13.0" --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126
ARG TORCH_SPEC="torch==2.13.0"
ARG TORCH_INDEX_URL="https://download.pytorch.org/whl/cpu"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    # OpenMP threads wait passively: spinning threads collapse throughput on a shared machine.
    OMP_WAIT_POLICY=PASSIVE \
    LENSLAB_DATA_DIR=/data

WORKDIR /app
# torch first, from its own index, so the project's dependency range is already met by the pinned build.
RUN pip install "${TORCH_SPEC}" --index-url "${TORCH_INDEX_URL}"
COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY ml ./ml
COPY lenslab_client ./lenslab_client
COPY migrations ./migrations
COPY templates ./templates
COPY static ./static
RUN pip install ".[postgres]" \
    && useradd --create-home --uid 1000 lenslab \
    && mkdir -p /data && chown lenslab /data
USER lenslab
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=5 \
    CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status != 200)"
CMD ["lenslab", "serve", "--host", "0.0.0.0", "--port", "8000", "--no-worker", "--workers", "2"]
