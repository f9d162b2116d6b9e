#!/usr/bin/env bash
# Runs the tests of @fedbroker/client (node --test) against the real broker binary, on loopback.
#
#   clients/js/test.sh                                   # builds and uses target/debug/fedbroker-tokio
#   FEDBROKER_BIN=target/debug/fedbroker-std clients/js/test.sh
#   FEDBROKER_JS_WS=/some/dir clients/js/test.sh   # a dir whose node_modules/ has the ws package: its tests run too
#
# Needs Node.js >= 20 and, unless FEDBROKER_BIN is given, cargo. The client has no npm
# dependencies, so nothing is installed. Exits non-zero when a test fails.
set -euo pipefail
# A FEDBROKER_BIN given relative to the caller's directory, before changing directory.
if [[ -n ${FEDBROKER_BIN:-} ]]; then
    FEDBROKER_BIN=$(realpath -e "$FEDBROKER_BIN") || exit 1
fi
cd "$(dirname "${BASH_SOURCE[0]}")"
ROOT=$(cd ../.. && pwd)

if ! command -v node >/dev/null; then
    echo "clients/js/test.sh: node is missing (Node.js >= 20 is needed)" >&2
    exit 1
fi
major=$(node -p 'process.versions.node.split(".")[0]')
if ((major < 20)); then
    echo "clients/js/test.sh: Node.js $(node --version) is too old; >= 20 is needed" >&2
    exit 1
fi

if [[ -z ${FEDBROKER_BIN:-} ]]; then
    (cd "$ROOT" && cargo build --quiet -p fedbroker-tokio)
    FEDBROKER_BIN=$ROOT/target/debug/fedbroker-tokio
fi
export FEDBROKER_BIN

# Under CI the `ws` tests must run, not be skipped.
if [[ ${CI:-false} == true && ! -d ${FEDBROKER_JS_WS:-/nonexistent}/node_modules/ws ]]; then
    echo "clients/js/test.sh: CI=true but FEDBROKER_JS_WS (${FEDBROKER_JS_WS:-unset}) has no node_modules/ws" >&2
    exit 1
fi

# Node 20 has a WebSocket class only behind a flag (Node >= 22 has it by default).
flags=()
if ! node -e 'process.exit(typeof WebSocket === "function" ? 0 : 1)'; then
    flags+=(--experimental-websocket)
fi

echo "clients/js: node $(node --version), broker $FEDBROKER_BIN"
# Every test has its own time limit (30 s); this bounds the whole run as well.
exec timeout --kill-after=5 300 node "${flags[@]}" --test --test-reporter=spec test/*.test.js
