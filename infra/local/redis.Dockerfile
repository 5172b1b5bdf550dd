# Stand-in for the official redis image where no registry is reachable (scripts/local-images builds it):
# Debian's redis-server behind the same interface docker-compose.yml uses: `docker-entrypoint.sh
# redis-server ARGS...` drops root for the redis user, data in /data, redis-cli on PATH.
ARG BASE=lowlight-sr-local/base:bookworm
FROM ${BASE}

# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/* \
    && install -d -o redis -g redis /data

COPY redis-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
WORKDIR /data
VOLUME /data
EXPOSE 6379
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["redis-server"]
