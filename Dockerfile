# syntax=docker/dockerfile:1
# Build here: make image (buildah, chroot isolation, on a Debian base made by debootstrap;
#   docs/operating.md, Deploying). Elsewhere: docker build -t lms-webhooks .
# Run:   docker run -v $PWD/config/example.yaml:/etc/lms-webhooks/config.yaml:ro \
#          -e STACKONE_API_KEY -e HR_WEBHOOK_SECRET -e REDIS_URL lms-webhooks

# Debian bookworm and its python3 (3.11). `make image` passes the base it made here
# (localhost/debian:bookworm-slim); the default is the same release from Docker Hub.
ARG BASE=debian:bookworm-slim

FROM ${BASE} AS build
# A CA bundle for pip behind a TLS-intercepting proxy: a path that the build mounts
# (`--volume host.crt:/run/host-ca.crt:ro --build-arg PIP_CERT=/run/host-ca.crt`), so the
# certificate never lands in a layer. PIP_CERT is pip's own variable for --cert; unset or
# empty, pip uses its own CA bundle.
ARG PIP_CERT
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
# pip and setuptools are the build's tools: out of the venv the final stage copies
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/venv/bin/pip install --no-cache-dir . \
 && /opt/venv/bin/pip uninstall --yes --quiet pip setuptools

FROM ${BASE}
# Only the interpreter: no venv module, no compilers, no apt lists, no pip cache
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt /var/log/dpkg.log \
 && useradd --uid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin lmswebhooks
COPY --from=build /opt/venv /opt/venv
COPY config/example.yaml /etc/lms-webhooks/config.yaml
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
USER 10001
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["lms-webhooks"]
CMD ["run", "--config", "/etc/lms-webhooks/config.yaml"]
