# syntax=docker/dockerfile:1
# Build: docker build -t lms-webhooks .
# Run:   docker run -v $PWD/config/example.yaml:/etc/lms-webhooks/config.yaml:ro \
#          -e STACKONE_API_KEY -e HR_WEBHOOK_SECRET -e REDIS_URL lms-webhooks

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/venv/bin/pip install --no-cache-dir .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --no-create-home lmswebhooks
COPY --from=build /opt/venv /opt/venv
COPY config/example.yaml /etc/lms-webhooks/config.yaml
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
USER 10001
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["lms-webhooks"]
CMD ["run", "--config", "/etc/lms-webhooks/config.yaml"]
