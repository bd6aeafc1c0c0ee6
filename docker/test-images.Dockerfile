# Images only the node tests use (tests/tests/node.rs, tests/tests/node_flame.rs); never shipped, never pushed.
#   docker build -f docker/test-images.Dockerfile --target coredns        -t localhost/tollgate/coredns:0.1.0 .
#   docker build -f docker/test-images.Dockerfile --target flame-standins -t localhost/tollgate/flame-standins:0.1.0 .
#   docker build -f docker/test-images.Dockerfile --target flame-analysis -t localhost/tollgate/flame-analysis:0.1.0 .
# The harness builds them without an engine, like tollgate's own (tests/src/images.rs TEST_IMAGES: docker/rootfs.sh
# for the files, the final stages below for the configuration), so final stages use only FROM scratch,
# COPY --from=rootfs, USER, EXPOSE, WORKDIR, ENTRYPOINT and CMD (exec form).

FROM docker.io/library/rust:1.95.0-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p tollgate-e2e --bin flame_standins \
 && mkdir -p /out && cp target/release/flame_standins /out/

# CoreDNS with the cluster DNS's plugins only (tests/node/coredns/main.go), as tests/node/provision.sh builds it.
FROM docker.io/library/golang:1.26-bookworm AS coredns-build
COPY tests/node/coredns/main.go /coredns/main.go
RUN cd /coredns \
 && printf 'module tollgate.local/coredns-binary\n\ngo 1.26\n\nrequire github.com/coredns/coredns v1.15.0\n' > go.mod \
 && CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags "-s -w" -o /out/coredns .

FROM build AS rootfs
ARG SOURCE_DATE_EPOCH=0
COPY --from=coredns-build /out/coredns /out/coredns
RUN apt-get update && apt-get install -y --no-install-recommends python3 && rm -rf /var/lib/apt/lists/*
RUN for image in coredns flame-standins flame-analysis; do \
      bash docker/rootfs.sh "$image" /out "/rootfs/$image" || exit 1; \
    done

# The cluster DNS (kube-system/coredns): port 53 as a non-root user, the pod lowering
# net.ipv4.ip_unprivileged_port_start.
FROM scratch AS coredns
COPY --from=rootfs /rootfs/coredns/ /
USER 65532:65532
EXPOSE 53/udp 53/tcp
ENTRYPOINT ["/usr/local/bin/coredns"]

# The FLAME node's services (keycloak, storage, kong, broker, hub-adapter, orchestrator, echo): the subcommand
# picks one.
FROM scratch AS flame-standins
COPY --from=rootfs /rootfs/flame-standins/ /
USER 65532:65532
EXPOSE 8080 9000
ENTRYPOINT ["/usr/local/bin/flame_standins"]

# An analysis as FLAME's Python SDK runs one: the SDK's calls, headers and FastAPI endpoints (:8000), standard
# library only. It computes longer than the test realm's tokens live.
FROM scratch AS flame-analysis
COPY --from=rootfs /rootfs/flame-analysis/ /
USER 65532:65532
EXPOSE 8000
WORKDIR /app
ENTRYPOINT ["/usr/bin/python3.11", "/app/analysis.py"]
CMD ["--compute-seconds", "30"]
