# syntax=docker/dockerfile:1
# pptp-sidecar: userspace PPTP client (and the embedded demo server) as a container sidecar.
#
# Stage 1 builds one wheel for the project and wheels for its dependencies; stage 2 installs them
# into a slim Python image with nftables (kill switch) and iproute2 (diagnostics), and runs as an
# unprivileged user.
#
# Capabilities for a non-root process: Docker's --cap-add / Kubernetes' capabilities.add only put
# NET_ADMIN and NET_RAW in the container's bounding set; a process running as a non-root USER starts
# with empty permitted/effective sets (Kubernetes has no ambient capabilities). So the interpreter
# that runs the sidecar gets them as *file* capabilities: a copy of the Python binary,
# /usr/local/bin/sidecar-python, carries cap_net_admin,cap_net_raw+ep and is the ENTRYPOINT. The
# plain `python` and the `sidecar` console script (used by HEALTHCHECK and exec probes) carry none.
# `nft` gets cap_net_admin+ep because the kill switch runs it as a child process, and capabilities
# are not inherited across exec for a non-root user.
# Consequences (documented in docs/operations.md):
#  - the container must be given NET_ADMIN and NET_RAW (cap_add / capabilities.add); without them
#    the kernel refuses to exec the capability-marked binaries ("Operation not permitted");
#  - no_new_privs must be off (Kubernetes allowPrivilegeEscalation: true; no
#    `security_opt: no-new-privileges`), or the kernel ignores file capabilities.

FROM python:3.11-slim-bookworm AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Stateless MPPE's RC4 is fastest through `arc4` (about 2x `cryptography`'s), which publishes wheels
# for x86_64 only (pyproject.toml asks for it there). On other machines (arm64) it is built here from
# its source, with a compiler that stays in this stage; the sidecar checks it against
# `cryptography` at import either way.
# hadolint ignore=DL3008
RUN if [ "$(uname -m)" != "x86_64" ]; then \
      apt-get update \
      && apt-get install -y --no-install-recommends gcc libc6-dev \
      && rm -rf /var/lib/apt/lists/*; \
    fi
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sidecar ./sidecar
RUN pip wheel --no-cache-dir --wheel-dir /wheels . \
 && if [ "$(uname -m)" != "x86_64" ]; then \
      pip wheel --no-cache-dir --wheel-dir /wheels "arc4>=0.5"; \
    fi

FROM python:3.11-slim-bookworm
LABEL org.opencontainers.image.title="pptp-sidecar" \
      org.opencontainers.image.description="Userspace PPTP VPN client that runs as a container sidecar" \
      org.opencontainers.image.licenses="MIT"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PPTP_HTTP=127.0.0.1:9101

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Debian's stable packages; their versions move with security updates, so they are not pinned.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends nftables iproute2 libcap2-bin \
 && rm -rf /var/lib/apt/lists/*

COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index /wheels/*.whl \
 && rm -rf /wheels \
 && cp /usr/local/bin/python3.11 /usr/local/bin/sidecar-python \
 && setcap cap_net_admin,cap_net_raw+ep /usr/local/bin/sidecar-python \
 && setcap cap_net_admin+ep /usr/sbin/nft \
 && getcap /usr/local/bin/sidecar-python /usr/sbin/nft \
 && useradd --system --no-log-init --uid 10001 --user-group --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin sidecar

USER 10001:10001
WORKDIR /tmp

# Liveness by default (process and supervisor alive); compose/k8s ask `--ready` where the tunnel
# must be up.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["sidecar", "healthcheck"]

ENTRYPOINT ["/usr/local/bin/sidecar-python", "-m", "sidecar"]
CMD ["up"]
