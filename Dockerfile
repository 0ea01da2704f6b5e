# One image for every genqueue process (worker, api, flower, simulator); docker-compose.yml
# chooses the process with `command:`. Build from the repository root: docker build -t genqueue .
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Unprivileged runtime user with a fixed uid, so volume ownership is predictable.
RUN useradd --uid 10001 --user-group --create-home --shell /usr/sbin/nologin genqueue

WORKDIR /src
COPY pyproject.toml README.md ./
COPY worker/ worker/
COPY api_producer/ api_producer/
COPY genqueue/ genqueue/
RUN pip install --no-cache-dir . \
    && rm -rf /src

# Writable working directory for anything the app keeps relative to its cwd.
WORKDIR /home/genqueue
USER genqueue

CMD ["genqueue", "worker"]
