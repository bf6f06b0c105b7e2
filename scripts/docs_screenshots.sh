#!/usr/bin/env bash
# Screenshots of the built docs site (docs/images/site-*.png) with headless Chromium (Debian's, as the tests use).
# Usage: bash scripts/docs_screenshots.sh   (needs the [docs] extra and chromium; writes only docs/images/site-*.png)
set -euo pipefail
cd "$(dirname "$0")/.."
CHROMIUM=$(command -v chromium || command -v chromium-browser) || { echo "chromium not found (apt-get install chromium)" >&2; exit 2; }
SITE=$(mktemp -d)
NO_MKDOCS_2_WARNING=1 python3 -m mkdocs build --strict --quiet --site-dir "$SITE"
PORT=$(python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
python3 -m http.server "$PORT" --bind 127.0.0.1 --directory "$SITE" >/dev/null 2>&1 &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null; rm -rf "$SITE"' EXIT
sleep 1
shot() {  # URL path, output file
  "$CHROMIUM" --headless=new --no-sandbox --disable-gpu --hide-scrollbars --window-size=1360,900 \
    --user-data-dir="$(mktemp -d)" --virtual-time-budget=4000 --screenshot="$2" "http://127.0.0.1:$PORT/$1" >/dev/null 2>&1
  echo "wrote $2"
}
shot "" docs/images/site-home.png
shot "reference/cli/" docs/images/site-cli.png
shot "deploy/" docs/images/site-deploy.png
shot "reference/runtime/" docs/images/site-api.png
