# A small weft image: built with the release profile, run on Debian slim.
#
#   docker build -t weft .
#   docker run --rm -p 8080:8080 weft        # then: curl http://127.0.0.1:8080/
#
# The image's config is config/ingress.toml with its listener on 0.0.0.0; the admin
# port (/ready, /live, /metrics) stays on the container's loopback: set admin.address
to 0.0.0.0:9901 in your own config for an orchestrator's probes. Mount your own
# config at /etc/weft/weft.toml. Docker's default seccomp profile
# refuses io_uring: weft then serves on epoll (`runtime.io = "auto"` says so in its
# log); `--security-opt seccomp=unconfined` or a profile allowing io_uring_* keeps it.

FROM rust:1.88-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p weft-gateway --bin weft \
 && ./target/release/weft manpage > /src/weft.1

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --no-create-home --shell /usr/sbin/nologin weft \
 && mkdir -p /etc/weft /usr/share/man/man1
COPY --from=build /src/target/release/weft /usr/local/bin/weft
COPY --from=build /src/weft.1 /usr/share/man/man1/weft.1
COPY config/ingress.toml /etc/weft/weft.toml
RUN sed -i 's/^address = "127.0.0.1:8080"/address = "0.0.0.0:8080"/' /etc/weft/weft.toml \
 && /usr/local/bin/weft check --config /etc/weft/weft.toml
USER weft
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/weft"]
CMD ["ingress", "--config", "/etc/weft/weft.toml"]
