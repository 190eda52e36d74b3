# The compose cluster's monitoring (docker-compose.cluster.yml): Prometheus, Alertmanager, the
# node exporter and the nginx exporter, from Debian bookworm's packages, one target each:
#
#   docker build -f docker/monitoring.Dockerfile --target prometheus -t grape-prometheus docker
#
# BASE_IMAGE lets a machine that cannot pull use a local bookworm root (tests/compose/run.sh
# builds grape-base:bookworm with debootstrap). Each runs as the unprivileged user its package
# creates.
ARG BASE_IMAGE=debian:bookworm-slim

FROM ${BASE_IMAGE} AS debian
# Packages must not start their services while the image is built.
RUN printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d

FROM debian AS prometheus
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /prometheus && chown prometheus:prometheus /prometheus
USER prometheus
VOLUME /prometheus
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]

FROM debian AS alertmanager
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus-alertmanager \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /alertmanager && chown prometheus:prometheus /alertmanager
USER prometheus
VOLUME /alertmanager
EXPOSE 9093
ENTRYPOINT ["/usr/bin/prometheus-alertmanager"]
# One Alertmanager: no gossip port.
CMD ["--config.file=/etc/alertmanager/alertmanager.yml", "--storage.path=/alertmanager", "--cluster.listen-address="]

FROM debian AS node-exporter
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus-node-exporter \
 && rm -rf /var/lib/apt/lists/*
USER prometheus
EXPOSE 9100
ENTRYPOINT ["/usr/bin/prometheus-node-exporter"]

FROM debian AS nginx-exporter
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus-nginx-exporter \
 && rm -rf /var/lib/apt/lists/*
USER prometheus
EXPOSE 9113
ENTRYPOINT ["/usr/bin/prometheus-nginx-exporter"]
