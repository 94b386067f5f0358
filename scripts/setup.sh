#!/usr/bin/env bash
# Set up .venv on a fresh machine: the CPU build of torch (pinned), then masklm with everything the demo and the
# tests need. Safe to run again; it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# torch first and pinned: 2.13.0 is the CPU build on this kind of machine; an unpinned torch can pull a CUDA build.
.venv/bin/python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null \
  || .venv/bin/pip install --quiet --disable-pip-version-check torch==2.13.0
.venv/bin/pip install --quiet --disable-pip-version-check -e ".[dev,onnx]"
# The browser test of the web page (tests/test_serve_browser.py) drives Debian's chromium through Playwright.
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null; then
  apt-get install -y -qq chromium >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1; } \
    || echo "setup: could not install chromium (apt-get install chromium); the browser test will fail" >&2
fi
