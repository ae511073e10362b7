# reconciler: the daemon image.
# Kept in lockstep with test/docker.test.ts, which replays these steps without Docker
# (same build command, `npm ci --omit=dev` in a separate folder, then this CMD and ENV).

# --- build: compile TypeScript to dist/ ---
FROM node:24-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --ignore-scripts
COPY tsconfig.json tsconfig.build.json ./
COPY scripts ./scripts
COPY src ./src
COPY jobs ./jobs
RUN npm run build

# --- runtime: production dependencies and the build only ---
FROM node:24-slim
# tini is PID 1: it forwards SIGTERM to Node and reaps zombies (docker run --init semantics).
RUN apt-get update && apt-get install -y --no-install-recommends tini && rm -rf /var/lib/apt/lists/*
WORKDIR /app
ENV NODE_ENV=production JOBS_DIR=dist/jobs HTTP_HOST=0.0.0.0 HTTP_PORT=8080 DATA_DIR=/app/.data PATH=/app/bin:$PATH
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts && npm cache clean --force
COPY --from=build /app/dist ./dist
COPY bin ./bin
# The image's user `node`, by number, so that Kubernetes' runAsNonRoot can verify it.
RUN mkdir -p /app/.data && chown 1000:1000 /app/.data
USER 1000:1000
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:' + (process.env.HTTP_PORT || 8080) + '/healthz').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["node", "bin/reconciler.js", "daemon"]
