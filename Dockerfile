# ITX Triage daemon image.
#
# The project is installed as a wheel: data/ and templates/ travel inside it (as
# triage/_resources/, see pyproject.toml) and the code finds them with importlib.resources.
# Dependencies are the exact versions the tests ran with (constraints.txt).
#
# Build:  docker build -t itx-triage .
#         (no registry here: scripts/image.sh builds it with podman on a stand-in base)
# Run:    docker run --env-file triage.env -v triage-var:/app/var -p 9108:9108 itx-triage
#         (`triage run`: applies the migrations, then runs the daemon; `... itx-triage run
#         --once` for one pass; `... itx-triage sla due ...`, `... itx-triage train`, any
#         triage command, as the arguments)
# Writable state lives in /app/var (a volume): the SQLite file, the dir:// outbox,
# attachments, corrections, and the models `triage train` and the nightly retrain write
# (var/model, TRIAGE_RETRAINED_MODEL_DIR), which the daemon prefers when they score no worse.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: a virtualenv with the pinned dependencies and the project's wheel -------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Bytecode is compiled here, once, for every module in the venv, and kept: the runtime user
# cannot write it, so without it every start compiled numpy, scipy and scikit-learn again
# (bench/results.md). unchecked-hash .pyc files do not depend on file times, which COPY
# need not keep.
# The dependencies first, in a layer of their own: a code change does not reinstall numpy.
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" > /tmp/requirements.txt \
    && pip install -c constraints.txt -r /tmp/requirements.txt \
    && python -m compileall -q -f -j 0 --invalidation-mode unchecked-hash /opt/venv/lib
COPY README.md ./
COPY triage ./triage
COPY classifiers ./classifiers
COPY data ./data
COPY templates ./templates
RUN pip wheel --no-deps -w /tmp/dist . \
    && pip install --no-deps /tmp/dist/itx_triage-*.whl \
    && test -f "$(python -c 'import classifiers.artifact as a; print(a.DEFAULT_MODEL_PATH)')" \
    && python -m compileall -q -f -j 0 --invalidation-mode unchecked-hash \
        /opt/venv/lib/python3*/site-packages/triage /opt/venv/lib/python3*/site-packages/classifiers

# ---- runtime: the venv, tini as PID 1, a non-root user -------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
# tini as PID 1: the kernel drops a SIGTERM sent to a PID 1 that has no handler yet, so with
# triage as PID 1 a stop during interpreter start-up was lost and the container killed 10 s
# later. tini forwards it; triage dies of it before its handler exists, and -e 143 makes that
# (128 + SIGTERM) a clean exit, as it is: nothing was fetched or sent yet.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini=0.19.0-1+b3 \
    && rm -rf /var/lib/apt/lists/*
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
WORKDIR /app
RUN mkdir -p /app/var && chown triage:triage /app/var
VOLUME ["/app/var"]
USER 10001:10001
EXPOSE 9108
# Asks /healthz on the port the settings give (TRIAGE_OPS_PORT, TRIAGE_CONFIG_FILE); with
# TRIAGE_OPS_PORT=0 there is no /healthz and the check says so (triage/healthcheck.py).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-m", "triage.healthcheck"]
# triage itself runs the command (default: the daemon, which applies the migrations at
# start); tests/test_deploy.py runs the ENTRYPOINT after tini's "--" + CMD outside a container.
ENTRYPOINT ["tini", "-e", "143", "--", "triage"]
CMD ["run"]
STOPSIGNAL SIGTERM
