#!/usr/bin/env bash
# Installs the pinned IaC tools (cfn-lint, AWS SAM CLI) into the
# git-ignored .lmaas/infra-venv; cheap when they are already there.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="$root/.lmaas/infra-venv"
[ -x "$venv/bin/python" ] || "${PYTHON:-python3}" -m venv "$venv"
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$root/infra/aws/requirements.txt" | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[infra] installing pinned cfn-lint and aws-sam-cli into .lmaas/infra-venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$root/infra/aws/requirements.txt"
  echo "$want" > "$stamp"
fi
