# One image for every process of the production set (see docker-compose.yml and Procfile).
FROM python:3.12-slim
WORKDIR /app
ENV PYTHONUNBUFFERED=1 DJANGO_SETTINGS_MODULE=config.settings
COPY pyproject.toml README.md ./
COPY config config
COPY budgets budgets
COPY metering metering
COPY billing billing
COPY templates templates
COPY manage.py ./
RUN pip install --no-cache-dir .
EXPOSE 8000
