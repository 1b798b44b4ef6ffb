#!/usr/bin/env bash
# Installs everything Parley needs from the project's own files: uv (pinned), then the locked
# environment. llama-cpp-python builds from source; pyproject.toml sets its portable CMake flags.
#
# uv is pinned for real: the one used is .tools/uv/bin/uv at exactly UV_VERSION. A uv already on
# PATH at that version is linked there; otherwise it is installed from PyPI into a virtual
# environment of its own (Debian 12 and Ubuntu refuse `pip install` into the system Python, and a
# user's own uv of another version is left alone).
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION=0.13.9
UV=.tools/uv/bin/uv

version_of() { "$@" --version 2>/dev/null | cut -d' ' -f2; }

if [ "$(version_of "$UV")" != "$UV_VERSION" ]; then
    rm -rf .tools/uv
    if command -v uv >/dev/null 2>&1 && [ "$(version_of uv)" = "$UV_VERSION" ]; then
        mkdir -p .tools/uv/bin
        ln -s "$(command -v uv)" "$UV"
    else
        if ! python3 -m venv .tools/uv >/dev/null 2>&1; then
            rm -rf .tools/uv
            echo "bootstrap: 'python3 -m venv' failed; on Debian or Ubuntu: apt-get install python3-venv" >&2
            exit 1
        fi
        .tools/uv/bin/python -m pip install --quiet --disable-pip-version-check "uv==${UV_VERSION}"
    fi
fi
printf "*\n" > .tools/.gitignore  # the pinned uv is not part of the repository
"$UV" sync --frozen --python 3.11
