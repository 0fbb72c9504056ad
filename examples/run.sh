#!/usr/bin/env bash
# Runs an example offline: builds the test guest once (Debian packages, ~75 s), makes sure a
# systemd user manager is reachable (where PID 1 is not systemd, as on containers and CI, it
# starts a private one), then `up -d --wait` and `ps`.
# usage: bash examples/run.sh [EXAMPLE]     (default: three-tier)
set -euo pipefail
cd "$(dirname "$0")/.."
example=${1:-three-tier}
.venv/bin/python -m tests.guest_images.build debian >/dev/null
if [ "$(cat /proc/1/comm 2>/dev/null)" != systemd ]; then
  manager_env=$(.venv/bin/python -m tests.support.systemd_user ensure /tmp/qemu-compose-user-manager)
  eval "$manager_env"
fi
compose=(.venv/bin/qemu-compose -f "examples/$example/qemu-compose.yaml")
"${compose[@]}" up -d --wait
"${compose[@]}" ps
if [ -n "${manager_env:-}" ]; then
  printf '\nThe VMs run under a private systemd user manager; to talk to it:\n%s\n' "$manager_env"
fi
printf 'Stop them: %s stop; remove them: %s destroy\n' "${compose[*]}" "${compose[*]}"
