#!/usr/bin/env bash
# Headless Chromium test of the browser examples against the real broker, on loopback: pages served
# from a second origin send (fetch) and listen (WebSocket) through CORS, the two-page WebRTC
# demo opens an RTCDataChannel, and the two-page chat (chat.html) shows presence, messages and
# request-reply. Installs what is missing: the Debian package chromium (about 70 s,
# needs root or sudo) and playwright-core from npm (never a downloaded browser).
#
#   examples/browser/test.sh                         # builds and uses target/debug/fedbroker-tokio
#   examples/browser/test.sh --update-screenshot     # also writes docs/images/webrtc-demo.png
#   FEDBROKER_BIN=target/debug/fedbroker-smol examples/browser/test.sh
#
# The demo pages' screenshots go to examples/browser/test/out/ (webrtc-demo.png, chat-demo.png).
# Exits non-zero when anything fails, naming it.
set -euo pipefail
# A FEDBROKER_BIN given relative to the caller's directory, before changing directory.
if [[ -n ${FEDBROKER_BIN:-} ]]; then
    FEDBROKER_BIN=$(realpath -e "$FEDBROKER_BIN") || exit 1
fi
cd "$(dirname "${BASH_SOURCE[0]}")"
ROOT=$(cd ../.. && pwd)

for arg in "$@"; do
    case $arg in
    --update-screenshot) export UPDATE_DOCS_SCREENSHOT=1 ;;
    *)
        echo "examples/browser/test.sh: unknown argument $arg" >&2
        exit 2
        ;;
    esac
done

as_root() {
    if ((EUID == 0)); then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo "$@"
    else
        echo "examples/browser/test.sh: need root (or sudo) to run: $*" >&2
        return 1
    fi
}

if ! command -v node >/dev/null || (($(node -p 'process.versions.node.split(".")[0]') < 20)); then
    echo "examples/browser/test.sh: Node.js >= 20 is needed" >&2
    exit 1
fi

export CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
if [[ ! -x $CHROMIUM ]]; then
    echo "installing the Debian package chromium (about 70 s)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
"$CHROMIUM" --version 2>/dev/null

if [[ ! -d test/node_modules/playwright-core ]]; then
    echo "installing playwright-core (npm)"
    (cd test && if [[ -f package-lock.json ]]; then npm ci --no-audit --no-fund --silent; else npm install --no-audit --no-fund --silent; fi)
fi

if [[ -z ${FEDBROKER_BIN:-} ]]; then
    (cd "$ROOT" && cargo build --quiet -p fedbroker-tokio)
    FEDBROKER_BIN=$ROOT/target/debug/fedbroker-tokio
fi
export FEDBROKER_BIN

# Node 20 has a WebSocket class only behind a flag; the test also listens from Node.
flags=()
if ! node -e 'process.exit(typeof WebSocket === "function" ? 0 : 1)'; then
    flags+=(--experimental-websocket)
fi

echo "examples/browser: node $(node --version), broker $FEDBROKER_BIN"
# Every test and every wait in it is bounded; this bounds the whole run as well.
cd test
exec timeout --kill-after=5 300 node "${flags[@]}" --test --test-reporter=spec browser.test.js
