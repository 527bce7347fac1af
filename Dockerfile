# syntax=docker/dockerfile:1
# botsky as one container: `botsky run`, JSON logs on stdout, config and data as volumes.
# Build: docker build -t botsky .   Run: see deploy/docker-compose.yml.

# --- build stage: a virtualenv with botsky and its dependencies (build tools stay here) -------
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY botsky ./botsky
RUN python -m venv /opt/botsky \
 && /opt/botsky/bin/pip install --upgrade pip \
 && /opt/botsky/bin/pip install . \
 && /opt/botsky/bin/botsky --version

# --- runtime stage: slim base, non-root, no compilers ----------------------------------------
FROM python:3.11-slim
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/botsky --create-home botsky
COPY --from=build /opt/botsky /opt/botsky
COPY deploy/botsky.yaml deploy/bots.yaml /etc/botsky/
ENV PATH=/opt/botsky/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    BOTSKY_DATA_DIR=/var/lib/botsky \
    BOTSKY_WEB__PORT=8080
USER botsky
WORKDIR /var/lib/botsky
VOLUME ["/var/lib/botsky"]
EXPOSE 8080
# /healthz answers while the process is alive (the web app runs in the same process).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]
ENTRYPOINT ["botsky"]
CMD ["run", "-c", "/etc/botsky/botsky.yaml"]
