# racequant: one image for the API (`racequant serve`) and the dashboard (`racequant dashboard`).
# Build: docker build -t racequant .      Run both: docker compose up (see docs/deploy.md)
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RACEQUANT_DB=/data/racequant.duckdb \
    RACEQUANT_MODELS_DIR=/data/models \
    RACEQUANT_HOST=0.0.0.0 \
    RACEQUANT_PORT=8001

# libgomp1: the OpenMP runtime LightGBM and XGBoost load; curl: the health check
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 curl \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
# dependencies first (pinned by constraints.txt), so a source change does not reinstall them
COPY pyproject.toml constraints.txt README.md ./
COPY src ./src
RUN pip install -c constraints.txt . \
    && useradd --create-home --uid 10001 racequant \
    && mkdir -p /data \
    && chown racequant:racequant /data

USER racequant
VOLUME ["/data"]
EXPOSE 8001 8501

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD curl -fsS "http://127.0.0.1:${RACEQUANT_PORT}/api/v1/model/status" || exit 1

# the API; docker-compose.yml runs the dashboard from the same image with another command
CMD ["racequant", "serve"]
