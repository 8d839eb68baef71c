# syntax=docker/dockerfile:1
#
# jacker-gate container image: built in the official Rust image, run from distroless `cc`
# (glibc + libgcc, no shell, no package manager) as the `nonroot` user (UID 65532).
#
#   docker build -t jacker-gate:0.1.0 .        (compose/auth.yml does this for the stack)
#
# The HEALTHCHECK runs the binary's own `healthcheck` subcommand, since the image has no shell,
# curl or wget.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# BuildKit caches for the registry and the target directory keep rebuilds incremental.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin jacker-gate \
 && install -D -m 0755 target/release/jacker-gate /out/jacker-gate

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/jacker-gate /usr/local/bin/jacker-gate
# In a container the gate must listen on all interfaces: the image's own config file says so. It
# is a file, not a JACKER_GATE_SERVER__LISTEN variable, because the environment beats the file: a
# variable here would silently override the listen address of the config a user mounts.
COPY config/container.toml /etc/jacker-gate/jacker-gate.toml
ENV JACKER_GATE_CONFIG=/etc/jacker-gate/jacker-gate.toml
USER 65532:65532
# 8080 with the image's config; the compose deployment's config listens with TLS on 8443.
EXPOSE 8080 8443
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/jacker-gate", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/jacker-gate"]
CMD ["run"]
