# driftwarden's image: the package installed system-wide (read-only to the service), run as an
# unprivileged user whose only writable place is the data directory, a volume.
#   docker build -t driftwarden .       docker run driftwarden worker --help
FROM python:3.11-slim
COPY . /src
RUN pip install --no-cache-dir '/src[postgres]' && rm -rf /src \
    && useradd --system --uid 10001 --user-group --home-dir /data --create-home driftwarden
# the worker keeps Faust's files (and, without DRIFTWARDEN_DATABASE_URL, the SQLite store) here
ENV DRIFTWARDEN_DATA_DIR=/data \
    DRIFTWARDEN_WEB_HOST=0.0.0.0
VOLUME ["/data"]
# an empty directory the service user cannot write: nothing may depend on writing to the cwd
WORKDIR /app
USER driftwarden
EXPOSE 6066
ENTRYPOINT ["driftwarden"]
CMD ["worker"]
