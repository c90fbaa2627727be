# splitproxy and its demo service in one small image.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY splitproxy ./splitproxy
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
    && useradd --system --uid 10001 splitproxy
USER splitproxy
EXPOSE 8080 9901
# Exec form, so SIGTERM reaches splitproxy and it drains before exiting.
ENTRYPOINT ["splitproxy"]
CMD ["serve"]
HEALTHCHECK --interval=5s --timeout=2s --retries=3 CMD ["splitproxy", "healthcheck"]
