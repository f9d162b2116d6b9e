# shellcheck shell=bash disable=SC2034 # variables set here are used by the scripts that source this file
# Shared by scripts/proxy-test and scripts/metrics-test (sourced, not run): installing what is
# missing, building and starting the broker, checks that print PASS/FAIL, and cleaning up.
# The sourcing script has `set -euo pipefail`; checks run in subshells with errexit in force.

shopt -s inherit_errexit

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
WSPROBE=$ROOT/scripts/lib/wsprobe.py
# Which broker binary to test (the three take the same flags): BROKER=fedbroker-smol scripts/...
BROKER=${BROKER:-fedbroker-tokio}
# BROKER_BIN=path/to/binary: test that binary instead of building $BROKER.
PASSED=0
FAILED=0
PIDS=()
TMP=
APT_UPDATED=false

as_root() {
    if ((EUID == 0)); then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo "$@"
    else
        echo "need root (or sudo) to run: $*" >&2
        return 1
    fi
}

# need COMMAND PACKAGE: installs the Debian package when the command is missing. A tool that cannot
# be installed is a failure, never a reason to skip (in CI or anywhere else).
need() {
    local cmd=$1 pkg=$2
    if command -v "$cmd" >/dev/null || [[ -x /usr/sbin/$cmd ]]; then
        return 0
    fi
    echo "installing Debian package $pkg (for $cmd)"
    if ! $APT_UPDATED; then
        as_root apt-get update -qq || die "apt-get update failed"
        APT_UPDATED=true
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null ||
        die "could not install $pkg (needed for $cmd)"
    command -v "$cmd" >/dev/null || [[ -x /usr/sbin/$cmd ]] || die "$pkg installed, but $cmd is still missing"
}

# The path of a command, looking in /usr/sbin too (not on a normal user's PATH).
cmd_path() {
    command -v "$1" 2>/dev/null || { [[ -x /usr/sbin/$1 ]] && echo "/usr/sbin/$1"; }
}

# Builds the broker (debug), unless BROKER_BIN names a binary already built (CI builds once).
build_broker() {
    CURRENT_STEP=build
    if [[ -n ${BROKER_BIN:-} ]]; then
        [[ -x $BROKER_BIN ]] || die "BROKER_BIN=$BROKER_BIN is not an executable"
        echo "using $BROKER_BIN (BROKER_BIN set: not building)"
        return
    fi
    echo "building $BROKER (debug)"
    (cd "$ROOT" && cargo build -q -p "$BROKER") || die "cargo build -p $BROKER failed"
    BROKER_BIN=$ROOT/target/debug/$BROKER
}

make_tmp() {
    TMP=$(mktemp -d "/tmp/fedbroker-$1.XXXXXX")
}

pass() {
    PASSED=$((PASSED + 1))
    printf 'PASS  %s%s\n' "$1" "${2:+ — $2}"
}

fail() {
    FAILED=$((FAILED + 1))
    printf 'FAIL  %s%s\n' "$1" "${2:+ — $2}"
}

# check NAME FUNCTION ARGS...: runs the function in a subshell with errexit in force; it prints one
# line of detail (or why it failed) and its status decides PASS or FAIL.
check() {
    local name=$1 out rc
    shift
    set +e
    out=$(
        set -e
        "$@" 2>&1
    )
    rc=$?
    set -e
    out=$(printf '%s' "$out" | tr '\n' ' ' | sed 's/ *$//')
    if ((rc == 0)); then pass "$name" "$out"; else fail "$name" "${out:-exit status $rc}"; fi
}

# A failure that stops the run (nothing after it could be checked).
die() {
    fail "${CURRENT_STEP:-setup}" "$*"
    summary
}

summary() {
    if [[ -n $TMP && -d $TMP ]] && { [[ ${KEEP_TMP:-0} == 1 ]] || ((FAILED > 0)); }; then
        printf '\nconfigs and logs kept in %s\n' "$TMP"
    fi
    printf '\n%d passed, %d failed\n' "$PASSED" "$FAILED"
    if ((FAILED > 0)); then exit 1; fi
    exit 0
}

# start_bg NAME COMMAND...: runs a command in the background, output in $TMP/NAME.out and .err;
# its pid goes in BG_PID and is stopped at exit.
start_bg() {
    local name=$1
    shift
    "$@" >"$TMP/$name.out" 2>"$TMP/$name.err" &
    BG_PID=$!
    PIDS+=("$BG_PID")
}

# start_broker NAME FLAGS...: starts the broker on 127.0.0.1 with the flags given (which should
# include --listen 127.0.0.1:0 or a config that does) and waits for its `listening on` line; sets
# BROKER_PORT and BROKER_PID.
start_broker() {
    local name=$1 i line
    shift
    start_bg "$name" "$BROKER_BIN" "$@"
    BROKER_PID=$BG_PID
    for ((i = 0; i < 200; i++)); do
        line=$(grep -m1 '^listening on ' "$TMP/$name.out" 2>/dev/null || true)
        [[ -n $line ]] && break
        kill -0 "$BROKER_PID" 2>/dev/null || die "broker $name exited at start: $(tail -n 3 "$TMP/$name.err")"
        sleep 0.05
    done
    [[ -n $line ]] || die "broker $name printed no 'listening on' line within 10 s"
    [[ $line =~ ^listening\ on\ https?://127\.0\.0\.1:([0-9]+)$ ]] || die "broker $name: unexpected line '$line'"
    BROKER_PORT=${BASH_REMATCH[1]}
}

# wait_for_file PATH SECONDS
wait_for_file() {
    local i
    for ((i = 0; i < $2 * 20; i++)); do
        [[ -e $1 ]] && return 0
        sleep 0.05
    done
    return 1
}

# gone PID: the process has ended (a zombie counts as ended: it has not been waited for yet).
gone() {
    [[ ! -e /proc/$1/status ]] || grep -q '^State:.*Z' "/proc/$1/status" 2>/dev/null
}

# wait_gone PID SECONDS
wait_gone() {
    local i
    for ((i = 0; i < $2 * 20; i++)); do
        gone "$1" && return 0
        sleep 0.05
    done
    return 1
}

# wait_status FILE SECONDS: waits for a wsprobe --status file; returns the status in it (124 on
# timeout). Background processes are not children of a check's subshell, so `wait` cannot be used.
wait_status() {
    wait_for_file "$1" "$2" || return 124
    return "$(cat "$1")"
}

# http METHOD URL [CURL ARGS...]: one request with curl; the status goes to stdout, the response head
# to $TMP/last.head and its body to $TMP/last.body.
http() {
    local method=$1 url=$2
    shift 2
    curl -sS --max-time 10 -X "$method" -D "$TMP/last.head" -o "$TMP/last.body" -w '%{http_code}' "$@" "$url"
}

# header NAME: a header's value from $TMP/last.head (the last response), without the CR.
header() {
    grep -i "^$1:" "$TMP/last.head" | tail -n 1 | cut -d: -f2- | sed 's/^ *//' | tr -d '\r'
}

# expect_eq WHAT ACTUAL EXPECTED
expect_eq() {
    if [[ $2 != "$3" ]]; then
        echo "$1: got '$2', expected '$3'"
        return 1
    fi
}

# Stops every background process this script started (by pid), then removes the temp directory
# (kept with KEEP_TMP=1 or after a failure; summary names it).
cleanup() {
    local pid i
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait_gone "$pid" 5 || kill -KILL "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    if [[ -n $TMP && -d $TMP && ${KEEP_TMP:-0} != 1 ]] && ((FAILED == 0)); then
        rm -rf "$TMP"
    fi
}
