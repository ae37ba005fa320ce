# The portal image (web and worker). The scoring runtime has its own image: scoring/Dockerfile.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 VAR_DIR=/app/var
WORKDIR /app
COPY pyproject.toml README.md ./
COPY collector/ collector/
COPY portal/ portal/
COPY deployments/ deployments/
COPY scoring/ scoring/
COPY devstack/ devstack/
RUN pip install --no-cache-dir . ./collector
COPY manage.py ./
COPY templates/ templates/
COPY static/ static/
RUN DEBUG=true python manage.py collectstatic --noinput
RUN useradd --system --home /app tributary && mkdir -p /app/var && chown tributary /app/var
USER tributary
EXPOSE 8000
CMD ["gunicorn", "portal.wsgi", "--bind", "0.0.0.0:8000", "--workers", "2"]
