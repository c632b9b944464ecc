# syntax=docker/dockerfile:1
# kagami: build the TypeScript and the minified bundle the daemon runs (scripts/bundle.mjs), keep only
# production dependencies, run on a slim Node 24 (LTS) image.

FROM node:24-bookworm-slim AS build
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY scripts/bundle.mjs ./scripts/
COPY scripts/shims ./scripts/shims
COPY src ./src
RUN npm run build && npm prune --omit=dev

FROM node:24-bookworm-slim
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="kagami" \
      org.opencontainers.image.description="Peer-to-peer container image sharing for containerd nodes" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/kagami-dev/kagami"
ENV NODE_ENV=production
WORKDIR /opt/kagami
COPY --from=build /src/package.json ./
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist ./dist
COPY bin ./bin
COPY proto ./proto
RUN ln -s /opt/kagami/bin/kagami.js /usr/local/bin/kagami
# Runs as root: the containerd socket is root:root 0660 and hosts.toml lives in root-owned dirs. The chart
# drops every capability and mounts the root filesystem read-only; see charts/kagami/README.md.
USER root
EXPOSE 29020 29021 29022
ENTRYPOINT ["kagami"]
CMD ["run"]
