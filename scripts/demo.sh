#!/usr/bin/env bash
# Installs what it needs (scripts/setup.sh), then runs the demo (as root: it builds network namespaces).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/sidecar demo "$@"
