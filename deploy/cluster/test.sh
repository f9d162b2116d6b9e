#!/usr/bin/env bash
# shellcheck disable=SC2317 # the c_* functions are called through `check`
# The test of deploy/cluster/, once per engine (NATS, then Redis): run.sh --engine ENGINE starts the
# engine's server (nats-server or redis-server), three brokers with --cluster and nginx in front of
# them (deploy/cluster/nginx.conf, the same for both) on free loopback ports; then, through nginx
# only:
#   - N listeners (ids 1..N, N = 12 by default) connect; nginx's round robin spreads them over the
#     three brokers, and each broker's GET / must count some (their sum is N);
#   - one POST to every id (each lands on whichever broker nginx picks, mostly not the listener's):
#     204, and every listener receives its own message, byte for byte;
#   - 20 POSTs one after the other to one id, spread over all three brokers by the round robin,
#     arrive in the order sent;
#   - a POST to an id nobody listens on: 404 "no listener on id ...";
#   - every broker received POSTs, and nginx logged no error;
#   - SIGTERM to run.sh stops nginx, the brokers and the engine's server.
# Each engine has its own run.sh (its own free ports and directory), stopped before the next starts.
#
#   deploy/cluster/test.sh                        # builds fedbroker-tokio (debug) first
#   deploy/cluster/test.sh --bin-dir target/debug # a binary already built (scripts/test-all)
#   deploy/cluster/test.sh --engine redis         # one engine only: nats, redis or both (default)
#   LISTENERS=30 deploy/cluster/test.sh           # more listeners
#   KEEP_TMP=1 deploy/cluster/test.sh             # keep configs and logs (always kept on failure)
#
# nginx, nats-server, redis-server, curl, python3 and perl are installed with apt-get when missing
# (the engines' only when tested); a tool that cannot be installed fails the test (never a skip).
# One PASS/FAIL line per check, named [nats] or [redis]; a failure to start one engine's cluster
# fails that engine and the test goes on with the next. The last line is "N passed, M failed" (both
# engines); the exit status is 0 only if nothing failed. Everything is stopped on exit.
set -euo pipefail
# shellcheck source=scripts/lib/harness.sh
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib/harness.sh"
trap cleanup EXIT

LISTENERS=${LISTENERS:-12}
BIN_DIR=
ENGINES=(nats redis)
usage() {
    echo "usage: deploy/cluster/test.sh [--bin-dir DIR] [--engine nats|redis|both]" >&2
    exit 2
}
while (($#)); do
    case $1 in
    --bin-dir) BIN_DIR=${2:-} && shift ;;
    --engine)
        case ${2:-} in
        nats | redis) ENGINES=("$2") ;;
        both) ENGINES=(nats redis) ;;
        *) usage ;;
        esac
        shift
        ;;
    *) usage ;;
    esac
    shift
done
((LISTENERS >= 3)) || {
    echo "LISTENERS must be 3 or more (one per broker at least)" >&2
    exit 2
}

CURRENT_STEP=tools
need python3 python3
need curl curl
need perl perl
need nginx nginx
for engine in "${ENGINES[@]}"; do
    case $engine in
    nats) need nats-server nats-server ;;
    redis) need redis-server redis-server ;;
    esac
done
if [[ -n $BIN_DIR ]]; then
    BIN_DIR=$(cd "$BIN_DIR" && pwd)
    BROKER_BIN=$BIN_DIR/$BROKER
    [[ -x $BROKER_BIN ]] || die "no executable $BROKER_BIN"
    echo "using $BROKER_BIN"
else
    build_broker
    BIN_DIR=$(dirname "$BROKER_BIN")
fi
make_tmp cluster-deploy
# nginx's workers (nobody, when started as root) must reach their directories under it.
chmod 711 "$TMP"
BASE_TMP=$TMP
VERSIONS="$("$(cmd_path nginx)" -v 2>&1 | sed 's/^nginx version: //')"
for engine in "${ENGINES[@]}"; do
    case $engine in
    nats) VERSIONS+="; $("$(cmd_path nats-server)" --version)" ;;
    redis) VERSIONS+="; redis-server $("$(cmd_path redis-server)" --version | sed -n 's/.* v=\([^ ]*\).*/\1/p')" ;;
    esac
done
echo "$VERSIONS; engines: ${ENGINES[*]}; temp dir: $TMP"

# broker_stat URL KEY: one number from a broker's GET / (JSON).
broker_stat() {
    curl -sS --max-time 5 "$1/" | python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$2"
}

c_healthz() {
    local s
    s=$(http GET "$NGINX_URL/healthz")
    expect_eq status "$s" 200
    expect_eq body "$(cat "$TMP/last.body")" ok
    echo "200 ok"
}

c_listeners() {
    local id
    for ((id = 1; id <= LISTENERS; id++)); do
        [[ -e $TMP/l$id.ready ]] || {
            echo "listener $id: no upgrade: $(cat "$TMP/l$id.err")"
            return 1
        }
    done
    echo "101 for ids 1..$LISTENERS"
}

c_spread() {
    local counts=() n total=0 i
    for i in 0 1 2; do
        n=$(broker_stat "${BROKER_URLS[$i]}" listeners)
        counts+=("$n")
        total=$((total + n))
    done
    echo "listeners per broker (GET /): ${counts[*]}"
    ((counts[0] > 0 && counts[1] > 0 && counts[2] > 0)) || {
        echo "a broker has no listener"
        return 1
    }
    expect_eq "sum of listeners" "$total" "$LISTENERS"
}

c_send_all() {
    local id s
    # nginx's round robin is cyclic: after N upgrades, the N POSTs would each land on the broker
    # of their own listener when 3 divides N. One request more in between, when needed, makes
    # every POST go to another broker than its listener's (checked below, from the access log).
    if ((LISTENERS % 3 != 2)); then
        s=$(http GET "$NGINX_URL/healthz")
        expect_eq "GET /healthz status" "$s" 200
    fi
    for ((id = 1; id <= LISTENERS; id++)); do
        printf 'to id %d \x00\xff %s' "$id" "$RANDOM$RANDOM" >"$TMP/msg$id"
        s=$(http POST "$NGINX_URL/$id" -H 'Content-Type: application/octet-stream' --data-binary @"$TMP/msg$id")
        expect_eq "POST /$id status" "$s" 204
    done
    echo "$LISTENERS × 204"
}

c_received() {
    local id rc
    for ((id = 1; id <= LISTENERS; id++)); do
        rc=0
        wait_status "$TMP/l$id.rc" 15 || rc=$?
        ((rc == 0)) || {
            echo "listener $id: status $rc: $(cat "$TMP/l$id.out" "$TMP/l$id.err" | tr '\n' ' ')"
            return 1
        }
        cmp -s "$TMP/msg$id" "$TMP/l$id/1" || {
            echo "listener $id received other bytes than were sent to it"
            return 1
        }
    done
    echo "$LISTENERS listeners, one message each, byte-exact, then Close 1000"
}

# Which broker each listener and each POST of c_send_all went to, from nginx's access log
# ($upstream_addr last; a WebSocket's line is written when it closes, as the listeners now have).
c_crossed() {
    local crossed
    crossed=$(awk -v n="$LISTENERS" '
        $4 == "\"GET" && $7 == 101 { split($5, p, "/"); if (p[2] + 0 >= 1 && p[2] + 0 <= n) listen[p[2]] = $NF }
        $4 == "\"POST" && $7 == 204 { split($5, p, "/"); if (p[2] + 0 >= 1 && p[2] + 0 <= n && !(p[2] in post)) post[p[2]] = $NF }
        END {
            c = 0; for (id in post) if ((id in listen) && post[id] != listen[id]) c++
            print c
        }' "$TMP/cluster/access.log")
    echo "$crossed of $LISTENERS POSTs reached another broker than their listener's, and crossed through $ENGINE_NAME"
    ((crossed * 2 >= LISTENERS))
}

ORDER_ID=$((LISTENERS + 1))
ORDER_N=20

c_order() {
    wait_for_file "$TMP/order.ready" 15 || {
        echo "no upgrade: $(cat "$TMP/order.err")"
        return 1
    }
    local k s rc=0 before=() after=() i
    for i in 0 1 2; do before+=("$(broker_stat "${BROKER_URLS[$i]}" messages_received)"); done
    for ((k = 1; k <= ORDER_N; k++)); do
        s=$(http POST "$NGINX_URL/$ORDER_ID" --data-binary "message $k")
        expect_eq "POST $k status" "$s" 204
    done
    for i in 0 1 2; do after+=("$(broker_stat "${BROKER_URLS[$i]}" messages_received)"); done
    wait_status "$TMP/order.rc" 15 || rc=$?
    ((rc == 0)) || {
        echo "status $rc: $(cat "$TMP/order.out" "$TMP/order.err" | tr '\n' ' ')"
        return 1
    }
    for ((k = 1; k <= ORDER_N; k++)); do
        expect_eq "message $k" "$(cat "$TMP/order/$k")" "message $k"
    done
    local got=()
    for i in 0 1 2; do
        got+=("$((after[i] - before[i]))")
        ((after[i] > before[i])) || {
            echo "broker $((i + 1)) received none of the POSTs (messages_received ${before[i]} → ${after[i]})"
            return 1
        }
    done
    echo "$ORDER_N in order; POSTs received per broker: ${got[*]}"
}

c_404() {
    local s id=$((LISTENERS + 100))
    s=$(http POST "$NGINX_URL/$id" --data-binary x)
    expect_eq status "$s" 404
    expect_eq body "$(cat "$TMP/last.body")" "no listener on id $id"
    echo "404 'no listener on id $id'"
}

c_error_log() {
    local bad
    bad=$(grep -E '\[(emerg|alert|crit|error)\]' "$TMP/cluster/error.log" || true)
    if [[ -n $bad ]]; then
        echo "$bad"
        return 1
    fi
    echo "no error in nginx's error.log; $(wc -l <"$TMP/cluster/access.log") requests in access.log"
}

# c_stop: SIGTERM to run.sh; it exits and every process it started (from its --ready file) is gone.
c_stop() {
    local p left=()
    kill -TERM "$RUN_PID"
    wait_gone "$RUN_PID" 15 || {
        echo "run.sh still runs 15 s after SIGTERM"
        return 1
    }
    for p in "$NGINX_PID" "${BROKER_PIDS[@]}" "$ENGINE_PID"; do
        wait_gone "$p" 5 || left+=("$p")
    done
    ((${#left[@]} == 0)) || {
        echo "still running after run.sh exited: ${left[*]}"
        return 1
    }
    echo "nginx, 3 brokers and ${ENGINE}-server stopped"
}

# stop_from INDEX: stops the background processes started from PIDS[INDEX] on (by pid), and forgets
# them.
stop_from() {
    local first=$1 pid
    for pid in "${PIDS[@]:first}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]:first}"; do
        wait_gone "$pid" 10 || kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    PIDS=("${PIDS[@]:0:first}")
}

# run_engine ENGINE: run.sh --engine ENGINE in $BASE_TMP/ENGINE, then every check through it. The
# checks' names start with [ENGINE]; a cluster that does not start fails this engine only.
run_engine() {
    local engine=$1 first=${#PIDS[@]} i id
    local passed0=$PASSED failed0=$FAILED
    ENGINE_NAME=$engine
    [[ $engine == nats ]] && ENGINE_NAME=NATS
    [[ $engine == redis ]] && ENGINE_NAME=Redis
    TMP=$BASE_TMP/$engine
    mkdir -p "$TMP"
    chmod 711 "$TMP"
    echo
    echo "== engine: $engine (temp dir: $TMP)"

    start_bg cluster "$ROOT/deploy/cluster/run.sh" --engine "$engine" --bin-dir "$BIN_DIR" --broker "$BROKER" \
        --free-ports --dir "$TMP/cluster" --ready "$TMP/ready"
    RUN_PID=$BG_PID
    for ((i = 0; i < 600; i++)); do
        [[ -e $TMP/ready ]] && break
        gone "$RUN_PID" && break
        sleep 0.05
    done
    if [[ ! -e $TMP/ready ]]; then
        if gone "$RUN_PID"; then
            fail "[$engine] start" "deploy/cluster/run.sh --engine $engine exited: $(tail -n 5 "$TMP/cluster.err" | tr '\n' ' ')"
        else
            fail "[$engine] start" "deploy/cluster/run.sh --engine $engine was not ready within 30 s: $(tail -n 5 "$TMP/cluster.err" | tr '\n' ' ')"
        fi
        stop_from "$first"
        ENGINE_RESULTS+=("$engine: $((PASSED - passed0)) passed, $((FAILED - failed0)) failed (did not start)")
        TMP=$BASE_TMP
        return 0
    fi
    # NGINX_URL, NGINX_PID, BROKER_URLS (3), BROKER_PIDS, ENGINE, ENGINE_URL, ENGINE_PID, ...
    NGINX_URL='' NGINX_PID='' ENGINE='' ENGINE_URL='' ENGINE_PID='' BROKER_URLS=() BROKER_PIDS=()
    # shellcheck disable=SC1091
    source "$TMP/ready"
    WS=ws://${NGINX_URL#http://}
    if [[ $ENGINE == "$engine" && $ENGINE_URL == "$engine://127.0.0.1:"* && -n $ENGINE_PID ]] &&
        ((${#BROKER_URLS[@]} == 3 && ${#BROKER_PIDS[@]} == 3)); then
        pass "[$engine] deploy/cluster/run.sh started ${engine}-server, 3 brokers with --cluster $ENGINE_URL and nginx" \
            "$NGINX_URL -> ${BROKER_URLS[*]}"
    else
        fail "[$engine] deploy/cluster/run.sh --engine $engine" \
            "ready file: ENGINE=$ENGINE ENGINE_URL=$ENGINE_URL ENGINE_PID=$ENGINE_PID BROKER_URLS=${BROKER_URLS[*]}"
    fi

    check "[$engine] GET /healthz through nginx" c_healthz

    # Listeners on ids 1..N through nginx, one after the other (so that the round robin places them
    # in id order); each waits for one message and saves it.
    for ((id = 1; id <= LISTENERS; id++)); do
        mkdir -p "$TMP/l$id"
        start_bg "l$id" python3 "$WSPROBE" listen "$WS/$id" --ready "$TMP/l$id.ready" --save "$TMP/l$id" \
            --until count --count 1 --timeout 30 --status "$TMP/l$id.rc"
        wait_for_file "$TMP/l$id.ready" 15 || break
    done

    check "[$engine] $LISTENERS WebSocket listeners (ids 1..$LISTENERS) connect through nginx" c_listeners
    check "[$engine] nginx's round robin spread the listeners over all 3 brokers" c_spread
    check "[$engine] one POST to every id through nginx → 204" c_send_all
    check "[$engine] every listener received its own message, byte for byte" c_received
    check "[$engine] the POSTs crossed brokers (nginx's access log: \$upstream_addr of each upgrade and POST)" c_crossed

    mkdir -p "$TMP/order"
    start_bg order python3 "$WSPROBE" listen "$WS/$ORDER_ID" --ready "$TMP/order.ready" --save "$TMP/order" \
        --until count --count "$ORDER_N" --timeout 30 --status "$TMP/order.rc"
    check "[$engine] $ORDER_N POSTs one after the other to one id, through all 3 brokers, arrive in order" c_order
    check "[$engine] POST to an id nobody listens on, on any broker: 404" c_404
    check "[$engine] nginx logged no error" c_error_log
    check "[$engine] SIGTERM to run.sh stops nginx, the 3 brokers and ${engine}-server" c_stop

    stop_from "$first"
    ENGINE_RESULTS+=("$engine: $((PASSED - passed0)) passed, $((FAILED - failed0)) failed")
    TMP=$BASE_TMP
}

# Set by run_engine from run.sh's --ready file (and reset before each engine).
NGINX_URL='' NGINX_PID='' ENGINE='' ENGINE_URL='' ENGINE_PID='' ENGINE_NAME='' RUN_PID='' WS=''
BROKER_URLS=() BROKER_PIDS=()
CURRENT_STEP=
ENGINE_RESULTS=()
for engine in "${ENGINES[@]}"; do
    run_engine "$engine"
done
echo
printf '%s\n' "${ENGINE_RESULTS[@]}"
summary
