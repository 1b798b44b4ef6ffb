#!/usr/bin/env bash
# Copies the chat page's third-party modules from the npm registry into the Python package
# (src/parley/web/assets/vendor). The copies are committed: neither CI nor users need npm.
# Run it after changing package.json: `web/build.sh`, then commit package-lock.json and vendor/.
set -euo pipefail
cd "$(dirname "$0")"
npm ci --ignore-scripts --no-audit --no-fund
vendor=../src/parley/web/assets/vendor
rm -rf "$vendor" && mkdir -p "$vendor"
# Source maps are not shipped: drop the comment that would make the browser ask for them.
strip_map() { sed '/^\/\/# sourceMappingURL=/d' "$1" >"$2"; }
strip_map node_modules/dompurify/dist/purify.es.mjs "$vendor/purify.es.mjs"
strip_map node_modules/marked/lib/marked.esm.js "$vendor/marked.esm.js"
cp node_modules/dompurify/LICENSE "$vendor/LICENSE.dompurify"
cp node_modules/marked/LICENSE "$vendor/LICENSE.marked"
printf 'dompurify %s\nmarked %s\n' \
    "$(node -p 'require("./node_modules/dompurify/package.json").version')" \
    "$(node -p 'require("./node_modules/marked/package.json").version')" >"$vendor/VERSIONS"
