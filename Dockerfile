# syntax=docker/dockerfile:1
# ITX Triage daemon image.
#
# The code finds its files beside the package, not in site-packages: triage/config.py,
# triage/ack.py and triage/sla.py look one level above triage/ for data/ and templates/,
# and classifiers/ reads classifiers/model/ and data/keywords.toml the same way. So the
# source tree lives at /app and is installed there in editable mode; a plain wheel install
# would leave data/ and templates/ behind.
#
# Build:  docker build -t itx-triage .
# Run:    docker run --env-file triage.env -p 9108:9108 itx-triage
#         (applies the migrations, then runs the daemon; `... itx-triage run --once` for one pass;
#         `--entrypoint triage itx-triage sla due ...` for a command that needs no database)

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: a virtualenv with the dependencies and the project installed in place ----------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app
COPY pyproject.toml README.md ./
COPY triage ./triage
COPY classifiers ./classifiers
# All of data/ (about 1 MB): the policy and keyword rules, plus samples/training for
# `triage demo`, `triage train` and `triage evaluate` inside the image.
COPY data ./data
COPY templates ./templates
RUN pip install -e . \
    && test -f classifiers/model/model.skops && test -f classifiers/model/model.scorer.npz \
    && find /app /opt/venv -name '__pycache__' -prune -exec rm -rf {} +

# ---- runtime: the same two paths, no compilers, no pip cache, a non-root user --------------
FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TRIAGE_LOG_FORMAT=json \
    TRIAGE_OPS_HOST=0.0.0.0 \
    TRIAGE_OPS_PORT=9108 \
    MALLOC_ARENA_MAX=2
RUN groupadd --system --gid 10001 triage \
    && useradd --system --uid 10001 --gid triage --home-dir /app --shell /usr/sbin/nologin triage
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
WORKDIR /app
# var/ holds the SQLite file, the dir:// outbox and attachments when those defaults are used.
RUN mkdir -p /app/var && chown triage:triage /app/var
VOLUME ["/app/var"]
USER 10001:10001
EXPOSE 9108
# /healthz answers from the event loop alone; python is used because slim has no curl.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os,urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('TRIAGE_OPS_PORT', '9108'), timeout=4)"]
# Migrations first, then the triage command given as CMD (default: the daemon). `exec`
# replaces the shell, so triage itself is PID 1, gets SIGTERM and finishes the batch in hand.
# tests/test_deploy.py runs this exact ENTRYPOINT + CMD outside a container.
ENTRYPOINT ["sh", "-c", "triage db upgrade && exec triage \"$@\"", "triage"]
CMD ["run"]
STOPSIGNAL SIGTERM
