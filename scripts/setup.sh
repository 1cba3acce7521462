#!/usr/bin/env bash
# Installs everything the project needs on a fresh Debian machine (run as root), idempotently:
# Debian packages (iproute2, nftables, iperf3, user-mode-linux, mmdebstrap, ...) and a virtual
# environment at .venv with the project and its test tools. Mirrors come from the machine's own apt
# and pip configuration; nothing here names one.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBS=(iproute2 nftables iperf3 iputils-ping procps libcap2-bin util-linux user-mode-linux uml-utilities mmdebstrap cpio zstd openvpn openssl)
missing=()
for p in "${DEBS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "setup: missing Debian packages (${missing[*]}); run as root or install them" >&2
    exit 1
  fi
  echo "setup: installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-}
if [[ -z $PY ]]; then
  for c in python3.11 python3; do
    if command -v "$c" >/dev/null && "$c" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then PY=$c; break; fi
  done
fi
[[ -n $PY ]] || { echo "setup: Python >= 3.11 not found" >&2; exit 1; }

stamp=.venv/.setup-stamp
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [[ ! -x .venv/bin/python || ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
  echo "setup: creating .venv with $PY"
  "$PY" -m venv .venv
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q -e '.[test]'
  echo "$want" > "$stamp"
fi
