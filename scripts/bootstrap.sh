#!/usr/bin/env bash
# Installs everything Parley needs from the project's own files: uv (pinned), then the locked
# environment. llama-cpp-python builds from source; pyproject.toml sets its portable CMake flags.
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION=0.13.9
if ! command -v uv >/dev/null 2>&1 && ! python3 -m uv --version >/dev/null 2>&1; then
    python3 -m pip install --quiet "uv==${UV_VERSION}"
fi
# `python3 -m uv` works even where a fresh install isn't on PATH yet (pyenv shims need a rehash).
if command -v uv >/dev/null 2>&1; then uv=uv; else uv="python3 -m uv"; fi
$uv sync --frozen --python 3.11
