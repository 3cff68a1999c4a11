# Chorus as it runs beside clickhouse-server in a pod:  docker build -t chorus:dev .
# test/k8s/dockerfile.test.ts runs this file's npm steps outside Docker (no engine runs on the
# project's machines), so keep RUN steps to npm/node commands and OS setup it knows how to skip.

# One base for every stage: the image's Node is the one the native module was compiled for.
ARG NODE_IMAGE=node:22-bookworm-slim

# Compilers for better-sqlite3 when no prebuilt binary fits the platform. Only the stages
# that are thrown away start from here; the runtime stage carries no compiler.
FROM ${NODE_IMAGE} AS toolchain
RUN set -eu; \
    apt-get update; \
    apt-get install -y --no-install-recommends python3 make g++; \
    rm -rf /var/lib/apt/lists/*
WORKDIR /app

FROM toolchain AS build
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json ./
COPY src ./src
RUN npm run build

# Its own stage rather than a prune of `build`, so BuildKit installs it while `build` compiles
# and no dev package can be left behind in it.
FROM toolchain AS production-deps
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund

FROM ${NODE_IMAGE} AS runtime
LABEL org.opencontainers.image.title="chorus" \
      org.opencontainers.image.description="Replication coordinator sidecar for ClickHouse: ZooKeeper only allocates LSNs and block IDs" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0"
# tini as PID 1 forwards SIGTERM to Chorus, which then lets inserts in flight finish (node as
# PID 1 would get no default signal handling and reap no zombies).
# uid/gid 101 is ClickHouse's user in its official image: the parts Chorus hardlinks into the
# data volume it shares with clickhouse-server must belong to ClickHouse.
# /usr/local/bin/chorus makes `kubectl exec POD -c chorus -- chorus status` work.
RUN set -eu; \
    apt-get update; \
    apt-get install -y --no-install-recommends tini; \
    rm -rf /var/lib/apt/lists/*; \
    getent group 101 >/dev/null || groupadd --system --gid 101 clickhouse; \
    getent passwd 101 >/dev/null || useradd --system --uid 101 --gid 101 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin clickhouse; \
    ln -s /app/bin/chorus.js /usr/local/bin/chorus
WORKDIR /app
# CHORUS_CONFIG is read by `chorus serve` and by the admin commands (for the replica's own
# client certificate); set it empty to configure by CHORUS_* variables alone.
# NODE_OPTIONS: the V8 flags every sidecar runs with (SIDECAR_V8_FLAGS in src/dev/cluster.ts):
# a small young generation, about 24 MB of RSS less.
ENV NODE_ENV=production \
    NODE_OPTIONS=--max-semi-space-size=2 \
    CHORUS_CONFIG=/etc/chorus/chorus.yaml
COPY --from=production-deps /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY package.json package-lock.json ./
COPY bin ./bin
COPY proto ./proto
# Numeric, so that Kubernetes' runAsNonRoot can check it without reading /etc/passwd.
USER 101:101
# HTTP (inserts, queries, probes), interserver (part exchange), gRPC (gossip, Admin API).
EXPOSE 8124 9010 9100
# node's fetch: the image has no curl. CHORUS_HTTP_PORT moves the port, as it moves Chorus's.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["node", "-e", "fetch(`http://127.0.0.1:${process.env.CHORUS_HTTP_PORT || 8124}/healthz`).then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
ENTRYPOINT ["/usr/bin/tini", "--", "chorus", "serve"]
