# Images of the pruning service. Build with `docker compose build`.
FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY client ./client
COPY server ./server

# gRPC front end: no TensorFlow.
FROM base AS server
RUN pip install ./client ./server
EXPOSE 50051
CMD ["pruning-server", "--listen", "0.0.0.0:50051"]

# Celery worker with TensorFlow (CUDA libraries from the [gpu] extra).
FROM base AS worker
COPY workers ./workers
RUN pip install ./client ./server "./workers[gpu]"
ENV TF_USE_LEGACY_KERAS=1
CMD ["celery", "-A", "pruning_worker.app", "worker", "--pool=solo", "--loglevel=INFO"]
