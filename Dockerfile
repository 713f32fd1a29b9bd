# tunproxy as a node agent image: `tunproxy run --kubernetes` in the DaemonSet of deploy/.
#   docker build -t tunproxy:0.1.0 .
# The TypeScript sources run through tsx (no build step); the TUN addon (dataplane/tun/tun.c)
# and the pinned-memory addon (dataplane/pin/pin.c) are compiled by `npm ci` in the build stage. The runtime stage has iproute2 for --node-setup.
FROM node:20-bookworm-slim AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 make g++ \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/tunproxy
COPY package.json package-lock.json binding.gyp ./
COPY dataplane/tun/tun.c dataplane/tun/
COPY dataplane/pin/pin.c dataplane/pin/
RUN npm ci --omit=dev --no-audit --no-fund
COPY bin ./bin
COPY control ./control
COPY dataplane ./dataplane
COPY examples ./examples

FROM node:20-bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends iproute2 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/tunproxy
COPY --from=build /opt/tunproxy /opt/tunproxy
ENV NODE_ENV=production
EXPOSE 10256
ENTRYPOINT ["node", "/opt/tunproxy/bin/tunproxy.js"]
CMD ["run", "--help"]
