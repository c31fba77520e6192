# syntax=docker/dockerfile:1
# One image for every process of the marketplace: the Dagster code server (the default command),
# the webserver, the daemon and the webhook receiver. docs/deploy.md#the-image lists the commands;
# deploy/helm/values.yaml runs it under Dagster's Helm chart.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The install steps live in deploy/image/install.sh, which CI also runs into a fresh venv: what is
# checked there is what this image installs. Only what the package is built from is copied.
COPY pyproject.toml setup.cfg README.md /tmp/src/
COPY marketplace /tmp/src/marketplace
COPY marketplace_dagster /tmp/src/marketplace_dagster
COPY deploy/image/install.sh /tmp/src/deploy/image/install.sh
RUN SRC=/tmp/src /tmp/src/deploy/image/install.sh /opt/dagster/venv \
    && rm -rf /tmp/src

# A numeric non-root user, so that Kubernetes' runAsNonRoot can verify it. DAGSTER_HOME stays
# writable by it: Dagster keeps compute logs and local artifacts there.
RUN groupadd --system --gid 10001 dagster \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/dagster \
        --shell /usr/sbin/nologin dagster \
    && mkdir -p /opt/dagster/dagster_home /opt/dagster/app \
    && chown 10001:10001 /opt/dagster/dagster_home

# MARKETPLACE_CONFIG: mount your marketplace configuration there (a ConfigMap under Helm). The
# image holds none, so a process that loads the definitions without it stops, naming the path.
ENV PATH=/opt/dagster/venv/bin:$PATH \
    DAGSTER_HOME=/opt/dagster/dagster_home \
    MARKETPLACE_CONFIG=/opt/dagster/app/marketplace.yaml

# The production instance (PostgreSQL from the DAGSTER_PG_* variables, the run queue); Helm's
# chart mounts its own over it. The workspace file is for the webserver and the daemon without Helm.
COPY deploy/dagster.yaml /opt/dagster/dagster_home/dagster.yaml
COPY deploy/workspace.yaml /opt/dagster/app/workspace.yaml

USER 10001:10001
WORKDIR /opt/dagster/app

# 3000: dagster-webserver; 3030: the code server (gRPC); 8765: marketplace-webhooks (its
# webhooks.listen port; set webhooks.listen to 0.0.0.0:8765 in a container).
EXPOSE 3000 3030 8765

# The code server, as Helm's chart runs it. The other processes, from the same image:
#   dagster-webserver -h 0.0.0.0 -p 3000 -w /opt/dagster/app/workspace.yaml
#   dagster-daemon run -w /opt/dagster/app/workspace.yaml
#   marketplace-webhooks
CMD ["dagster", "api", "grpc", "-m", "marketplace_dagster.definitions", "-h", "0.0.0.0", "-p", "3030"]
