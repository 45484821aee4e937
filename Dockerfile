# churnwatch: the monitor (`churnwatch run`) and the event simulator share this image.
# Pinned base: Python 3.11 (bytewax 0.21.1 ships wheels for CPython 3.8 to 3.12) on Debian 12.
FROM python:3.11.13-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/churnwatch

# The package's folders, as pyproject.toml maps them (see [tool.setuptools.package-dir]).
COPY pyproject.toml README.md ./
COPY churnwatch ./churnwatch
COPY dataflows ./dataflows
COPY state ./state
COPY metrics ./metrics
COPY dashboards ./dashboards

RUN pip install . \
    && useradd --system --uid 10001 --user-group --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin churnwatch

USER churnwatch

# /metrics and the customer worklist API.
EXPOSE 9464

CMD ["churnwatch", "run"]
