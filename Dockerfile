# The model service (`python -m serving`), built from uv.lock. Two stages: uv and anything a
# wheel might need to build stay in the builder; the final image holds the virtual
# environment, params.yaml and a non-root user. The same image runs `mlflow server` in
# compose.yaml (the scale-out extra brings psycopg and boto3).
# Images cannot be pulled on the project's CI machines: `make lint` checks this file with
# hadolint, and tests/test_stack.py runs the same topology as local processes.
FROM ghcr.io/astral-sh/uv:0.13.8 AS uv

FROM python:3.11.7-slim-bookworm AS builder
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /src
# Dependencies first: this layer is rebuilt only when the lock changes.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --extra scale-out --no-install-project
COPY src ./src
COPY serving ./serving
COPY monitoring ./monitoring
RUN uv sync --frozen --no-dev --extra scale-out --no-editable

FROM python:3.11.7-slim-bookworm
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --no-create-home app
WORKDIR /app
COPY --from=builder /app/.venv /app/.venv
COPY params.yaml ./
RUN mkdir -p /app/logs/predictions && chown -R app:app /app/logs
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false \
    MLFLOW_DISABLE_TELEMETRY=true \
    DO_NOT_TRACK=true
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2)"]
# 0.0.0.0 inside the container; compose.yaml publishes the port on the host's 127.0.0.1 only.
CMD ["python", "-m", "serving", "--host", "0.0.0.0", "--port", "8000"]
