#!/usr/bin/env bash
# The whole test suite: installs what it needs (scripts/setup.sh), lints (ruff, mypy), then runs
# pytest over tests/ (unit, netns end-to-end as root, interop against Debian's pptpd in a VM).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "== ruff"; .venv/bin/ruff check sidecar tests bench fuzz
echo "== ruff format"; .venv/bin/ruff format --check sidecar tests bench fuzz
echo "== mypy"; .venv/bin/mypy sidecar fuzz
echo "== pytest"
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [[ $rc -eq 5 ]]; then echo "pytest collected no tests: that is a failure here" >&2; exit 1; fi
exit $rc
