# bzi-broadcast: one image for the web server, scheduler, delivery workers and the Telegram bot.
# Build: docker build -t bzi-broadcast .    Run: see docker-compose.yml and README ("Container").

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY bzi_broadcast ./bzi_broadcast
COPY templates ./templates
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
    && python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir /wheels/*.whl

FROM python:3.11-slim
RUN groupadd --system --gid 10001 bzi \
    && useradd --system --uid 10001 --gid bzi --home-dir /srv/bzi --create-home \
       --shell /usr/sbin/nologin bzi
COPY --from=build /opt/venv /opt/venv
COPY config /etc/bzi-broadcast
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    BZI_WEB_HOST=0.0.0.0 \
    BZI_WEB_PORT=8080 \
    BZI_LOGGING_FORMAT=json
WORKDIR /srv/bzi
USER 10001:10001
EXPOSE 8080
# serve migrates the database at start and stops cleanly on SIGTERM (in-flight sends finish or
# are handed back within the grace period).
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]
CMD ["bzi-broadcast", "serve"]
