#!/usr/bin/env bash
# The built-in demo on a fresh machine: set up, then prepare + pretrain on the IMDB reviews (preset small, about
# 10 minutes on 2 CPU cores), show fill-mask predictions, then fine-tune it and a random-init twin on Rotten
# Tomatoes sentences and print both accuracies. Extra arguments go to `masklm pretrain`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/masklm pretrain "$@"
