# Images of the pruning service. Build with `docker compose build`. Every install takes its
# versions from requirements.lock (scripts/lock.sh), the versions the tests passed with.
FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
# Both services run as an unprivileged user (uid 10001), never root: a model or dataset is
# untrusted input. Its state directory (PRUNING_STATE_DIR; the worker's cache volume below it) is
# its own, so a named volume mounted there starts owned by it too.
RUN groupadd --system --gid 10001 pruning \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/pruning --shell /usr/sbin/nologin pruning \
    && mkdir -p /var/lib/pruning/cache && chown -R 10001:10001 /var/lib/pruning
WORKDIR /app
COPY requirements.lock ./
COPY client ./client
COPY core ./core

# gRPC front end: no TensorFlow.
FROM base AS server
COPY server ./server
RUN pip install -c requirements.lock ./client ./core ./server
EXPOSE 50051
USER 10001:10001
CMD ["pruning-server", "--listen", "0.0.0.0:50051"]

# Celery worker with TensorFlow (CUDA libraries from the [gpu] extra).
FROM base AS worker
COPY workers ./workers
RUN pip install -c requirements.lock ./client ./core "./workers[gpu]"
ENV TF_USE_LEGACY_KERAS=1 HOME=/var/lib/pruning
USER 10001:10001
CMD ["celery", "-A", "pruning_worker.app", "worker", "--pool=solo", "--loglevel=INFO"]
