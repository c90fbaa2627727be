# splitproxy and its demo service in one small image.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY splitproxy ./splitproxy
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
# Rollout state (each route's step and weight, the record of promotions and rollbacks) lives
# in SPLITPROXY_STATE_DIR: without it a restarted proxy would roll a rolled-back candidate out
# again. The directory is created and handed to the non-root user before VOLUME, so a new
# named volume mounted there starts out owned by that user (Docker copies the image's
# directory, ownership included, into an empty named volume).
ENV PYTHONUNBUFFERED=1 \
    SPLITPROXY_STATE_DIR=/var/lib/splitproxy
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin splitproxy \
    && install -d -o splitproxy -g splitproxy -m 0750 /var/lib/splitproxy
VOLUME ["/var/lib/splitproxy"]
USER splitproxy
EXPOSE 8080 9901
# Exec form, so SIGTERM reaches splitproxy and it drains before exiting.
ENTRYPOINT ["splitproxy"]
CMD ["serve"]
HEALTHCHECK --interval=5s --timeout=2s --retries=3 CMD ["splitproxy", "healthcheck"]
