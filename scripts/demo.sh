#!/usr/bin/env bash
# The built-in demo on a fresh machine: set up, then prepare + pretrain on the IMDB reviews (preset small, about
# 10 minutes on 2 CPU cores) and show fill-mask predictions. Extra arguments go to `masklm pretrain`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/masklm pretrain "$@"
