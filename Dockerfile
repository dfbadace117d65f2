# Build stage: compile TypeScript with the dev dependencies.
FROM node:20-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json tsconfig.json ./
RUN npm ci --no-audit --no-fund --omit=optional
COPY src ./src
RUN npm run build

# Runtime: production dependencies only; the embedded PostgreSQL (optional) is left out.
FROM node:20-bookworm-slim
ENV NODE_ENV=production
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund --omit=dev --omit=optional && npm cache clean --force
COPY --from=build /app/dist ./dist
USER node
EXPOSE 6432 9187
ENTRYPOINT ["node", "dist/cli.js"]
CMD ["--config", "/etc/pgbudget/pgbudget.yaml"]
