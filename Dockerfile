# reconciler: the daemon image. It holds the engine only; your job files go in /app/jobs (build
# FROM this image and COPY them there, or mount them). TypeScript job files load as they are.
# Kept in lockstep with test/docker.test.ts, which replays these steps without Docker
# (same build command, `npm ci --omit=dev` in a separate folder, the same links, then this CMD and ENV).

# --- build: compile TypeScript to dist/ ---
FROM node:24-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --ignore-scripts
COPY tsconfig.json tsconfig.build.json ./
COPY scripts/copy-migrations.js ./scripts/
COPY src ./src
RUN npm run build

# --- runtime: production dependencies and the build only (no PGlite: production uses PostgreSQL) ---
FROM node:24-slim
# tini is PID 1: it forwards SIGTERM to Node and reaps zombies (docker run --init semantics).
RUN apt-get update && apt-get install -y --no-install-recommends tini && rm -rf /var/lib/apt/lists/*
WORKDIR /app
ENV NODE_ENV=production JOBS_DIR=/app/jobs HTTP_HOST=0.0.0.0 HTTP_PORT=8080
COPY package.json package-lock.json ./
# PGlite (the embedded database, for trying reconciler out) comes as an optional peer of drizzle-orm,
# which npm installs even with --omit=dev: production refuses it (NODE_ENV=production needs DATABASE_URL).
RUN npm ci --omit=dev --ignore-scripts && rm -rf node_modules/@electric-sql && npm cache clean --force
COPY --from=build /app/dist ./dist
COPY bin ./bin
# `reconciler` on PATH, for `kubectl exec … -- reconciler run <name>` and the migrate Job.
RUN ln -s /app/bin/reconciler.js /usr/local/bin/reconciler && mkdir -p /app/jobs
# The image's user `node`, by number, so that Kubernetes' runAsNonRoot can verify it.
USER 1000:1000
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:' + (process.env.HTTP_PORT || 8080) + '/healthz').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["node", "bin/reconciler.js", "daemon"]
