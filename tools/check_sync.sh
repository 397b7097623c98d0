#!/usr/bin/env bash
# Fails when nbdev-export or nbdev-clean would change a tracked file (notebooks and ltpaper/ out of step).
set -euo pipefail
bin=${1:-.venv/bin}
before=$(git status --porcelain --untracked-files=all -- nbs ltpaper | sort)
"$bin/nbdev-export"
"$bin/nbdev-clean"
after=$(git status --porcelain --untracked-files=all -- nbs ltpaper | sort)
if [ "$before" != "$after" ]; then
  echo "sync-check FAILED: nbdev-export / nbdev-clean changed these files; edit the notebooks, export, clean, commit:" >&2
  diff <(echo "$before") <(echo "$after") >&2 || true
  exit 1
fi
echo "sync-check: notebooks and ltpaper/ are in step"
