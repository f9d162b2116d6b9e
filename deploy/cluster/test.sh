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
#   - mailbox ids (run.sh gives the brokers --mailbox 9000-9999, kept in the engine): two POSTs to
#     one with nobody listening, on two brokers, answer 202 with Fedbroker-Seq 1 then 2 (one
#     sequence for all brokers), and a listener with ?since=0 receives both, in order;
#   - every broker received POSTs, and nginx logged no error;
#   - a broker dies and nothing acknowledged is lost: a listener connected to broker 2 itself (not
#     through nginx) receives 3 POSTs (204); broker 2 is killed (kill -9; run.sh --keep-going goes
#     on with the other two); 3 more POSTs answer 202; a listener through nginx with since= the
#     last seq the first one received gets exactly the 3 others, in order; nginx logged no error but
#     the connections broker 2 refused;
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
((LISTENERS >= 3 && LISTENERS + 100 < 9000)) || {
    echo "LISTENERS must be 3 or more (one per broker at least) and below 8900 (ids from 9000 keep a mailbox)" >&2
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

# ws_seq URL: one WebSocket upgrade with wsprobe's client, closed at once; prints its status and
# its Fedbroker-Seq header ("101 2").
ws_seq() {
    python3 -c '
import sys
sys.path.insert(0, sys.argv[1])
from wsprobe import WebSocket
ws = WebSocket(sys.argv[2], timeout=10)
print(ws.status, ws.headers.get("fedbroker-seq", "none"))
ws.close()' "$(dirname "$WSPROBE")" "$1"
}

# broker_of ADDR: which broker (1, 2 or 3) an $upstream_addr of nginx's access log is.
broker_of() {
    local i
    for i in 0 1 2; do
        [[ ${BROKER_URLS[$i]} == "http://$1" ]] && echo "$((i + 1))" && return 0
    done
    echo "?"
}

# upstreams METHOD ID STATUS N: the brokers (1, 2, 3) that answered the first N such requests, from
# nginx's access log, waiting up to 5 s for their lines (written once the answer is sent).
upstreams() {
    local i addrs=()
    for ((i = 0; i < 100; i++)); do
        mapfile -t addrs < <(awk -v m="\"$1" -v u="/$2" -v s="$3" '$4 == m && $5 == u && $7 == s { print $NF }' "$TMP/cluster/access.log")
        ((${#addrs[@]} >= $4)) && break
        sleep 0.05
    done
    for ((i = 0; i < $4 && i < ${#addrs[@]}; i++)); do
        broker_of "${addrs[$i]}"
    done
}

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

# Mailbox ids, from run.sh's MAILBOX (its --mailbox, 9000-9999 by default): KEPT_ID for the two
# kept messages, CRASH_ID for the broker that dies. Set by run_engine.
KEPT_ID=
CRASH_ID=
CRASH_N=3

# c_mailbox_kept: nobody listens on KEPT_ID; two POSTs through nginx (the round robin sends them
# to two brokers) are kept in the engine, numbered by one sequence.
c_mailbox_kept() {
    local k s by
    for k in 1 2; do
        printf 'kept %d \x00\xff %s' "$k" "$RANDOM$RANDOM" >"$TMP/kept$k"
        s=$(http POST "$NGINX_URL/$KEPT_ID" --data-binary @"$TMP/kept$k")
        expect_eq "POST $k status" "$s" 202
        expect_eq "POST $k Fedbroker-Seq" "$(header Fedbroker-Seq)" "$k"
    done
    mapfile -t by < <(upstreams POST "$KEPT_ID" 202 2)
    echo "202 Fedbroker-Seq: 1 from broker ${by[0]:-?}, 202 Fedbroker-Seq: 2 from broker ${by[1]:-?}"
    [[ ${by[0]:-?} != "?" && ${by[1]:-?} != "?" && ${by[0]} != "${by[1]}" ]] || {
        echo "(the two POSTs did not reach two brokers)"
        return 1
    }
}

# c_mailbox_replay: a listener through nginx with ?since=0 receives both, in order, byte for byte;
# the 101 says Fedbroker-Seq: 2 (the last seq of the id).
c_mailbox_replay() {
    local rc=0 k by
    mkdir -p "$TMP/kept"
    python3 "$WSPROBE" listen "$WS/$KEPT_ID?since=0" --save "$TMP/kept" --until count --count 2 --timeout 15 \
        >"$TMP/kept.out" 2>"$TMP/kept.err" || rc=$?
    ((rc == 0)) || {
        echo "status $rc: $(cat "$TMP/kept.out" "$TMP/kept.err" | tr '\n' ' ')"
        return 1
    }
    for k in 1 2; do
        cmp -s "$TMP/kept$k" "$TMP/kept/$k" || {
            echo "message $k: other bytes than POST $k's"
            return 1
        }
    done
    expect_eq "upgrade with ?since=0 (status, Fedbroker-Seq)" "$(ws_seq "$WS/$KEPT_ID?since=0")" "101 2"
    by=$(upstreams GET "$KEPT_ID" 101 1)
    echo "messages 1 and 2 replayed by broker ${by:-?}, in order, byte-exact, then Close 1000;" \
        "101 with Fedbroker-Seq: 2"
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

# c_crash_listen: a listener on broker 2 itself (not through nginx; started by run_engine, with
# ?since=0 on a new id: its k-th message is seq k) receives CRASH_N POSTs sent through nginx.
c_crash_listen() {
    local k s statuses=()
    wait_for_file "$TMP/crash.ready" 15 || {
        echo "no upgrade on broker 2: $(cat "$TMP/crash.err")"
        return 1
    }
    for ((k = 1; k <= CRASH_N; k++)); do
        printf 'before %d \x00\xff %s' "$k" "$RANDOM$RANDOM" >"$TMP/crash-msg$k"
        s=$(http POST "$NGINX_URL/$CRASH_ID" --data-binary @"$TMP/crash-msg$k")
        [[ $s == 204 || $s == 202 ]] || {
            echo "POST $k status: got '$s', expected 204 (or 202)"
            return 1
        }
        expect_eq "POST $k Fedbroker-Seq" "$(header Fedbroker-Seq)" "$k"
        statuses+=("$s")
    done
    wait_for_file "$TMP/crash/$CRASH_N" 10 || {
        echo "the listener on broker 2 received $(find "$TMP/crash" -type f | wc -l) of $CRASH_N"
        return 1
    }
    for ((k = 1; k <= CRASH_N; k++)); do
        cmp -s "$TMP/crash-msg$k" "$TMP/crash/$k" || {
            echo "message $k: other bytes than POST $k's"
            return 1
        }
    done
    echo "${statuses[*]} (Fedbroker-Seq 1-$CRASH_N), all received by the listener on broker 2 (${BROKER_URLS[1]})"
}

# c_crash_kill: kill -9 broker 2. Its listener's connection ends; the seq it processed last goes to
# $TMP/crash.since. run.sh (--keep-going) and the other two brokers go on, and CRASH_N more POSTs
# through nginx (which skips broker 2) are kept: 202, seqs going on.
c_crash_kill() {
    local k s rc=0 since by
    kill -KILL "${BROKER_PIDS[1]}"
    wait_gone "${BROKER_PIDS[1]}" 5 || {
        echo "broker 2 still runs 5 s after kill -9"
        return 1
    }
    wait_status "$TMP/crash.rc" 10 || rc=$?
    ((rc == 0)) || {
        echo "the listener on broker 2: status $rc: $(cat "$TMP/crash.out" "$TMP/crash.err" | tr '\n' ' ')"
        return 1
    }
    since=$(find "$TMP/crash" -type f | wc -l)
    echo "$since" >"$TMP/crash.since"
    for ((k = CRASH_N + 1; k <= 2 * CRASH_N; k++)); do
        printf 'after %d \x00\xff %s' "$k" "$RANDOM$RANDOM" >"$TMP/crash-msg$k"
        s=$(http POST "$NGINX_URL/$CRASH_ID" --data-binary @"$TMP/crash-msg$k")
        expect_eq "POST $k status" "$s" 202
        expect_eq "POST $k Fedbroker-Seq" "$(header Fedbroker-Seq)" "$k"
    done
    if gone "$RUN_PID"; then
        echo "run.sh exited: $(tail -n 3 "$TMP/cluster.err" | tr '\n' ' ')"
        return 1
    fi
    if gone "${BROKER_PIDS[0]}" || gone "${BROKER_PIDS[2]}"; then
        echo "broker 1 or 3 is gone too"
        return 1
    fi
    mapfile -t by < <(upstreams POST "$CRASH_ID" 202 "$CRASH_N")
    echo "the listener's connection ended after $since messages (last seq processed: $since);" \
        "$CRASH_N × 202 (Fedbroker-Seq $((CRASH_N + 1))-$((2 * CRASH_N))) from brokers ${by[*]}; run.sh went on"
}

# c_crash_resume: a listener through nginx (to broker 1 or 3) with since= the last seq processed
# receives exactly the rest, in order: what it had not received before the crash, then the
# messages kept after it. The 101 of ?since=LAST says LAST: nothing else was kept.
c_crash_resume() {
    local since rc=0 k n last=$((2 * CRASH_N)) by
    since=$(cat "$TMP/crash.since")
    n=$((last - since))
    mkdir -p "$TMP/crash2"
    python3 "$WSPROBE" listen "$WS/$CRASH_ID?since=$since" --save "$TMP/crash2" --until count --count "$n" \
        --timeout 15 >"$TMP/crash2.out" 2>"$TMP/crash2.err" || rc=$?
    ((rc == 0)) || {
        echo "status $rc: $(cat "$TMP/crash2.out" "$TMP/crash2.err" | tr '\n' ' ')"
        return 1
    }
    for ((k = 1; k <= n; k++)); do
        cmp -s "$TMP/crash-msg$((since + k))" "$TMP/crash2/$k" || {
            echo "message $k of the replay is not POST $((since + k))'s"
            return 1
        }
    done
    expect_eq "upgrade with ?since=$last (status, Fedbroker-Seq)" "$(ws_seq "$WS/$CRASH_ID?since=$last")" "101 $last"
    by=$(upstreams GET "$CRASH_ID" 101 1)
    [[ $by != 2 ]] || {
        echo "the replay came from broker 2, which was killed"
        return 1
    }
    echo "since=$since: seqs $((since + 1))-$last replayed by broker ${by:-?}, in order, byte-exact;" \
        "101 of since=$last says Fedbroker-Seq: $last"
}

# c_error_log_crash: after broker 2's death, nginx's error.log has only the connections it refused.
c_error_log_crash() {
    local bad refused port=${BROKER_URLS[1]##*:}
    bad=$(grep -E '\[(emerg|alert|crit|error)\]' "$TMP/cluster/error.log" |
        grep -vF "connect() failed (111: Connection refused) while connecting to upstream" || true)
    bad+=$(grep -F "connect() failed (111: Connection refused)" "$TMP/cluster/error.log" |
        grep -vF "upstream: \"http://127.0.0.1:$port/" || true)
    if [[ -n $bad ]]; then
        echo "$bad"
        return 1
    fi
    refused=$(grep -cF "connect() failed (111: Connection refused)" "$TMP/cluster/error.log" || true)
    echo "only $refused × connect() refused by broker 2 (127.0.0.1:$port), each request passed to another broker"
}

# c_stop: SIGTERM to run.sh; it exits and every process it started (from its --ready file) is gone
# (broker 2 is gone already: c_crash_kill killed it).
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
    echo "nginx, brokers 1 and 3 and ${ENGINE}-server stopped"
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

    # --keep-going: run.sh goes on when c_crash_kill kills broker 2.
    start_bg cluster "$ROOT/deploy/cluster/run.sh" --engine "$engine" --bin-dir "$BIN_DIR" --broker "$BROKER" \
        --free-ports --keep-going --dir "$TMP/cluster" --ready "$TMP/ready"
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
    NGINX_URL='' NGINX_PID='' ENGINE='' ENGINE_URL='' ENGINE_PID='' MAILBOX='' BROKER_URLS=() BROKER_PIDS=()
    # shellcheck disable=SC1091
    source "$TMP/ready"
    WS=ws://${NGINX_URL#http://}
    # Two ids of run.sh's mailbox range (9000-9999 by default), each used once per engine.
    KEPT_ID=$((${MAILBOX%%-*} + 1))
    CRASH_ID=$((KEPT_ID + 1))
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

    check "[$engine] mailbox kept by $ENGINE_NAME: 2 POSTs to id $KEPT_ID, nobody listening → 202, Fedbroker-Seq 1, 2" \
        c_mailbox_kept
    check "[$engine] a listener through nginx on id $KEPT_ID with ?since=0 receives both kept messages, in order" \
        c_mailbox_replay
    check "[$engine] nginx logged no error" c_error_log

    # A broker dies: a listener connected to broker 2 itself, on a new mailbox id, from seq 1.
    mkdir -p "$TMP/crash"
    start_bg crash python3 "$WSPROBE" listen "ws://${BROKER_URLS[1]#http://}/$CRASH_ID?since=0" \
        --ready "$TMP/crash.ready" --save "$TMP/crash" --until eof --count "$CRASH_N" --timeout 30 \
        --status "$TMP/crash.rc"
    check "[$engine] a listener on broker 2 itself (id $CRASH_ID, since=0) receives $CRASH_N POSTs sent through nginx" \
        c_crash_listen
    check "[$engine] kill -9 broker 2: run.sh --keep-going goes on, $CRASH_N more POSTs through nginx → 202" \
        c_crash_kill
    check "[$engine] nothing acknowledged is lost: since= the last seq processed, through nginx, gets exactly the rest" \
        c_crash_resume
    check "[$engine] nginx logged no error but the connections broker 2 refused once killed" c_error_log_crash
    check "[$engine] SIGTERM to run.sh stops nginx, the brokers left and ${engine}-server" c_stop

    stop_from "$first"
    ENGINE_RESULTS+=("$engine: $((PASSED - passed0)) passed, $((FAILED - failed0)) failed")
    TMP=$BASE_TMP
}

# Set by run_engine from run.sh's --ready file (and reset before each engine).
NGINX_URL='' NGINX_PID='' ENGINE='' ENGINE_URL='' ENGINE_PID='' ENGINE_NAME='' RUN_PID='' WS='' MAILBOX=''
BROKER_URLS=() BROKER_PIDS=()
CURRENT_STEP=
ENGINE_RESULTS=()
for engine in "${ENGINES[@]}"; do
    run_engine "$engine"
done
echo
printf '%s\n' "${ENGINE_RESULTS[@]}"
summary
