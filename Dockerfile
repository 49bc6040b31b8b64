# syntax=docker/dockerfile:1
# The service reads data/ (SLA policy, keyword rules) and templates/ beside its code,
# so the image installs the project in place (editable) under /app.
FROM python:3.11-slim
RUN useradd --system --create-home --uid 10001 triage
WORKDIR /app
COPY pyproject.toml README.md ./
COPY triage ./triage
COPY classifiers ./classifiers
COPY data ./data
COPY templates ./templates
RUN pip install --no-cache-dir -e . && mkdir -p /app/var && chown triage /app/var
USER triage
ENV TRIAGE_LOG_FORMAT=json
CMD ["triage", "run"]
