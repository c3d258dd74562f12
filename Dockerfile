# imdsweb image: web (gunicorn + whitenoise), Celery worker/beat and the simulator share it.
# Installs only from package registries (PyPI, Debian).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# The demo's lock (make lock): the exact versions make demo installs, hashes checked; then the
# project itself, without resolving anything again.
COPY requirements/demo.txt ./requirements/
RUN pip install --require-hashes -r requirements/demo.txt
COPY pyproject.toml README.md ./
COPY imdsweb ./imdsweb
COPY fleet ./fleet
COPY imdssim ./imdssim
RUN pip install --no-deps .
COPY manage.py ./
COPY templates ./templates
COPY static ./static
COPY scripts ./scripts
RUN DJANGO_DEBUG=false DJANGO_SECRET_KEY=collectstatic-only python manage.py collectstatic --noinput -v 0 \
    && useradd --create-home --uid 1000 imdsweb && mkdir -p var && chown -R imdsweb var

USER imdsweb
EXPOSE 8000
CMD ["gunicorn", "imdsweb.wsgi", "--bind", "0.0.0.0:8000", "--workers", "3"]
