# The stylization service. Build:  docker build -t style-transfer .
# Run (CPU):  docker run -p 8000:8000 style-transfer
# Run (GPU):  docker run --gpus all -p 8000:8000 style-transfer
#
# The pinned torch wheel is a CUDA build that bundles its CUDA runtime libraries, so a slim Python base
# is CUDA-capable: with the NVIDIA container toolkit on the host (driver only), the server finds the
# GPU and says so at start-up; without one it runs on the CPU.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Optional features, pyproject.toml's extras, comma-separated. "video" (PyAV) paints video clips
# (POST /v1/videos, the web page's video upload; without it they answer 501 video_unsupported). Build
# with --build-arg EXTRAS= to leave it out; "heif" adds HEIC photos.
ARG EXTRAS=video

# Dependencies first, from pyproject.toml alone, so a code change does not reinstall torch (several GB):
# this layer is rebuilt only when pyproject.toml or EXTRAS changes.
COPY pyproject.toml ./
RUN EXTRAS="$EXTRAS" python -c "import os, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + [r for e in os.environ['EXTRAS'].split(',') if e.strip() \
    for r in p['optional-dependencies'][e.strip()]]))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# Then the package itself, without resolving the dependencies again.
COPY README.md LICENSE ./
COPY style_transfer ./style_transfer
COPY server ./server
RUN pip install --no-deps .

COPY weights ./weights

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin app
USER app

ENV STYLE_TRANSFER_HOST=0.0.0.0 \
    STYLE_TRANSFER_PORT=8000 \
    STYLE_TRANSFER_WEIGHTS=/app/weights
EXPOSE 8000

# Healthy once every model is loaded and warmed up (/readyz); start-period covers the warm-up.
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4).status == 200 else 1)"]

CMD ["python", "-m", "server"]
