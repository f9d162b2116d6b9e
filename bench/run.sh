#!/usr/bin/env bash
# fedbroker side by side with mosquitto and nats-server, on loopback, in one run.
#
#   bench/run.sh                 # full run (~25 min on 2 cores): results in bench/results/
#   bench/run.sh --smoke         # every scenario with a few hundred messages against
#                                # fedbroker-tokio only (and four relays through nats-server, four
#                                # through redis-server, half of them to mailbox ids), no peers, no
#                                # charts, results in target/bench-smoke/ (what CI runs)
#   bench/run.sh --rounds 5      # more rounds per relay figure (medians are reported)
#   bench/run.sh --pin           # servers on CPU 1, the load generator on CPU 0 (taskset), so
#                                # they never compete for a core; results in bench/results-pinned/
#   bench/run.sh --bin-dir DIR   # fedbroker-{tokio,smol,std} from DIR (or $FEDBROKER_BIN_DIR), not
#                                # built here; only fedbroker-bench is built
#   bench/run.sh --scenarios fanout,reqrep --systems tokio,nats --out DIR
#                                # only some phases (relay,latency,idle,fanin,fanout,reqrep,fault,
#                                # cluster; latency needs relay) and systems (tokio,smol,std,
#                                # mosquitto,nats)
#   bench/run.sh --scenarios cluster --out bench/results-cluster
#                                # only the cluster phase (8 below)
#
# Phases of the full run, each server started here on its own port with its own config (never a
# Debian service) and stopped on exit:
#   1. relay: 64 B, 1 KiB, 64 KiB × window 1 and 16, 16 listeners and 16 senders, for every system,
#      systems interleaved round-robin (and rotated each round) so machine drift cancels out;
#   2. latency at half of each system's own measured maximum (64 B and 1 KiB, window 16);
#   3. idle: 10 000 subscribed listeners against a fresh instance of each system;
#   4. fan-in: 64 senders to one listener of each fedbroker adapter, --queue-limit 16;
#   5. fan-out: 1 publisher, 1 / 100 / 1000 listeners on one topic (fedbroker --topics), 64 B and
#      1 KiB, deliveries/s; every system, interleaved and rotated like the relay;
#   6. request-reply: 1 and 16 requesters, one echoing responder (fedbroker POST ?reply= and an
#      envelope listener; nats-server PUB with a reply inbox), 64 B and 1 KiB; round trips/s and
#      latency. mosquitto has no request-reply (MQTT 3.1.1) and is not in this phase.
#   7. fault (fedbroker only; `fedbroker-bench fault` starts each broker itself with --mailbox):
#      16 senders → 16 mailbox ids, half the listeners plain and half envelope, dropping their
#      connections at random and coming back with ?since=; three configurations per adapter:
#      in memory (reconnects only), --store-sync always and --store-sync batch, each also killed
#      with SIGKILL and restarted 3 times; every acknowledged message must arrive once, in seq
#      order. Then the cost of the store: the same load without faults, no store / always /
#      batch, window 16 and 1, interleaved over the rounds.
#   8. cluster (fedbroker-tokio only, docs/cluster.md): fedbroker-tokio brokers with --cluster,
#      through each engine in turn: one nats-server and one redis-server (Redis >= 7, sharded
#      pub/sub; `--save "" --appendonly no`), and another of each for the mailbox configurations
#      below, all on 127.0.0.1 only and stopped at the end; the
#      relay (16 listeners, 16 senders, 64 B, window 16 and 1) with
#        1-node              one broker without --cluster (the baseline, measured once),
#        1-node-cluster-E    one broker with --cluster, listeners and senders on it (all local),
#        2-nodes-E           listeners on broker A, senders on broker B (every message crosses E),
#        3-nodes-E           listeners on A and B (alternating), senders on C (every message crosses),
#        1-node-cluster-mailbox-E  one broker with --cluster and --mailbox 1-1000 (the relay's ids
#                            1-16 keep their mailbox in the engine, docs/cluster.md §3: every message
#                            goes through the engine, though listeners and senders are on it),
#        2-nodes-mailbox-E   the same with listeners on broker A, senders on broker B,
#      for E = nats and redis (eleven configurations; the mailbox ones on brokers of their own
#      sharing another server of E, NATS's with JetStream (-js -sd, a fresh store dir), and
#      accepting 202 as well as 204: --accept-202), interleaved and rotated over the rounds; then
#      the POST→frame latency of each at a fixed moderate pace (5000 msgs/s, window 16). CPU per
#      message is the sum over every server process of the run (brokers and the engine's server).
#      Its own table: OUT/cluster/table.md (raw lines in OUT/cluster.jsonl), ratios to 1-node. All
#      of it shares the machine's cores with the load generator: more brokers cannot show more
#      throughput on one machine; what it shows is the cost of the hop through each engine
#      (BENCHMARKS.md "Cluster (NATS and Redis)"). The smoke runs 2-nodes and 2-nodes-mailbox
#      through each engine.
# Then one table with ratios to the best peer (bench/results/table.md), raw JSON lines
# (raw.jsonl), aggregates (results.json), machine facts (machine.txt) and SVG charts.
# Any lost, duplicated, reordered or corrupted message fails the run (non-zero exit).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
ORIG_ARGS=("$@")

SMOKE=0
PIN=0
ROUNDS=3
OUT=
IDLE_CONNECTIONS=10000
BIN_DIR=${FEDBROKER_BIN_DIR:-}
SCENARIOS=relay,latency,idle,fanin,fanout,reqrep,fault,cluster
ONLY_SYSTEMS=
while (($#)); do
    case $1 in
    --smoke) SMOKE=1 ;;
    --pin) PIN=1 ;;
    --rounds)
        ROUNDS=$2
        shift
        ;;
    --out)
        OUT=$2
        shift
        ;;
    --idle-connections)
        IDLE_CONNECTIONS=$2
        shift
        ;;
    --bin-dir)
        BIN_DIR=$2
        shift
        ;;
    --scenarios)
        SCENARIOS=$2
        shift
        ;;
    --systems)
        ONLY_SYSTEMS=$2
        shift
        ;;
    -h | --help)
        sed -n '2,/^set -euo/{/^set -euo/d;p}' "$ROOT/bench/run.sh"
        exit 0
        ;;
    *)
        echo "run.sh: unknown argument '$1' (try --help)" >&2
        exit 2
        ;;
    esac
    shift
done
want() { [[ ,$SCENARIOS, == *,$1,* ]]; }
for sc in ${SCENARIOS//,/ }; do
    case $sc in
    relay | latency | idle | fanin | fanout | reqrep | fault | cluster) ;;
    *)
        echo "run.sh: unknown scenario '$sc' in --scenarios (relay,latency,idle,fanin,fanout,reqrep,fault,cluster)" >&2
        exit 2
        ;;
    esac
done
if want latency && ! want relay; then
    echo "run.sh: --scenarios latency needs relay (it paces at half of the relay's maximum)" >&2
    exit 2
fi
if ((SMOKE)); then
    OUT=${OUT:-$ROOT/target/bench-smoke}
elif ((PIN)); then
    OUT=${OUT:-$ROOT/bench/results-pinned}
else
    OUT=${OUT:-$ROOT/bench/results}
fi
# --pin: every server runs on CPU 1 and the load generator on CPU 0 (the runtimes size their
# thread pools from that affinity: one core each). Without it both share every core.
SRV=()
GEN=()
if ((PIN)); then
    if (($(nproc) < 2)) || ! command -v taskset >/dev/null; then
        echo "run.sh: --pin needs 2 or more CPUs and taskset (util-linux)" >&2
        exit 2
    fi
    SRV=(taskset -c 1)
    GEN=(taskset -c 0)
fi
mkdir -p "$OUT"
RAW=$OUT/raw.jsonl
: >"$RAW"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/fedbroker-bench.XXXXXX")
# Server configs and logs are kept here after the run (a failure's cause is usually in them).
LOGS=$ROOT/target/bench-logs
PIDS=()
FAILED=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do
        kill "$p" 2>/dev/null || true
    done
    for p in "${PIDS[@]}"; do
        wait "$p" 2>/dev/null || true
    done
    rm -rf "$WORK"/*-store # JetStream's records: not kept with the logs
    rm -rf "$LOGS"
    mkdir -p "$LOGS"
    cp -r "$WORK"/. "$LOGS"/ 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# 10 000 idle listeners need more than the usual 1024 descriptors, in the servers started below
# (they inherit this limit) and in the load generator.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

log() { printf '\n==> %s\n' "$*"; }

# ---- build ---------------------------------------------------------------------------------
if ((SMOKE)); then
    SYSTEMS=(tokio)
else
    SYSTEMS=(tokio smol std mosquitto nats)
fi
if [[ -n $ONLY_SYSTEMS ]]; then
    picked=()
    for s in ${ONLY_SYSTEMS//,/ }; do
        case $s in
        tokio | smol | std | mosquitto | nats) picked+=("$s") ;;
        *)
            echo "run.sh: unknown system '$s' in --systems (tokio,smol,std,mosquitto,nats)" >&2
            exit 2
            ;;
        esac
    done
    SYSTEMS=("${picked[@]}")
fi
ADAPTERS=()
for s in "${SYSTEMS[@]}"; do
    case $s in tokio | smol | std) ADAPTERS+=("$s") ;; esac
done
# The cluster phase runs fedbroker-tokio brokers (and nats-server and redis-server), whatever
# --systems says; the smoke runs two small relays through each engine.
CLUSTER=0
if want cluster; then
    CLUSTER=1
fi
BUILD=("${ADAPTERS[@]}")
if ((CLUSTER)) && [[ " ${BUILD[*]} " != *" tokio "* ]]; then
    BUILD+=(tokio)
fi
if [[ -n $BIN_DIR ]]; then
    BIN_DIR=$(cd "$BIN_DIR" && pwd)
    for s in "${BUILD[@]}"; do
        if [[ ! -x $BIN_DIR/fedbroker-$s ]]; then
            echo "run.sh: --bin-dir $BIN_DIR has no executable fedbroker-$s" >&2
            exit 2
        fi
    done
    log "building fedbroker-bench (release); brokers from $BIN_DIR"
    cargo build --release -p fedbroker-bench
else
    pkgs=()
    for s in "${BUILD[@]}"; do pkgs+=(-p "fedbroker-$s"); done
    log "building ${BUILD[*]/#/fedbroker-} and fedbroker-bench (release)"
    cargo build --release "${pkgs[@]}" -p fedbroker-bench
fi
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps 2>/dev/null | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
BIN=${TARGET_DIR:-$ROOT/target}/release
BENCH=$BIN/fedbroker-bench
FED_BIN=${BIN_DIR:-$BIN}

# ---- peers ---------------------------------------------------------------------------------
PATH=$PATH:/usr/sbin:/usr/local/sbin
if [[ " ${SYSTEMS[*]} " == *" mosquitto "* || " ${SYSTEMS[*]} " == *" nats "* ]]; then
    if ! command -v mosquitto >/dev/null || ! command -v nats-server >/dev/null; then
        log "installing mosquitto and nats-server (Debian packages)"
        as_root() { if ((EUID == 0)); then "$@"; else sudo "$@"; fi; }
        as_root apt-get update -qq
        DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq mosquitto nats-server >/dev/null
    fi
fi
if ((CLUSTER)); then
    missing=()
    command -v nats-server >/dev/null || missing+=(nats-server)
    command -v redis-server >/dev/null || missing+=(redis-server)
    if ((${#missing[@]})); then
        log "installing ${missing[*]} (Debian packages) for the cluster phase"
        as_root() { if ((EUID == 0)); then "$@"; else sudo "$@"; fi; }
        as_root apt-get update -qq
        DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
fi

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null ||
        echo $((20000 + RANDOM % 20000))
}

wait_port() { # PORT PID NAME
    local i
    for ((i = 0; i < 100; i++)); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
            return 0
        fi
        if ! running "$2"; then
            echo "run.sh: $3 exited at start:" >&2
            cat "$WORK/$3".log >&2 || true
            return 1
        fi
        sleep 0.1
    done
    echo "run.sh: $3 did not open port $1 in 10 s" >&2
    return 1
}

# Is child PID still running (not exited; a zombie child still answers kill -0)?
running() {
    local st
    st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ -n $st && $st != Z && $st != X ]]
}

declare -A ADDR PID
# start SYSTEM [extra fedbroker flags...]: starts a fresh instance (one retry after a failed
# start, with what is known about the failure logged); sets ADDR[SYSTEM], PID[SYSTEM].
start() {
    start_once "$@" && return 0
    echo "run.sh: retrying the start of $1 in 2 s" >&2
    sleep 2
    start_once "$@"
}

start_once() {
    local sys=$1 port port2 p bin
    shift
    case $sys in
    tokio | smol | std | node[0-9] | nats-node[0-9] | redis-node[0-9] | nats-mnode[0-9] | redis-mnode[0-9])
        # node0, E-nodeN, E-mnodeN (with mailbox ids): a fedbroker-tokio of the cluster phase.
        bin=fedbroker-$sys
        [[ $sys == *node[0-9] ]] && bin=fedbroker-tokio
        # Emptied here, not by the redirection below: that one runs in the background child, and
        # the wait loop could read the previous instance's line first.
        : >"$WORK/$sys.out"
        "${SRV[@]}" "$FED_BIN/$bin" --listen 127.0.0.1:0 --max-connections 20000 --log-level warn "$@" \
            >"$WORK/$sys.out" 2>>"$WORK/$sys.log" &
        p=$!
        local i
        for ((i = 0; i < 300; i++)); do
            if grep -q '^listening on http://' "$WORK/$sys.out" 2>/dev/null; then break; fi
            if ! running "$p"; then
                local rc=0
                wait "$p" || rc=$?
                echo "run.sh: $bin ($sys) exited at start with status $rc; its stderr ends:" >&2
                tail -5 "$WORK/$sys.log" >&2
                return 1
            fi
            sleep 0.1
        done
        ADDR[$sys]=fedbroker://$(sed -n 's#^listening on http://##p' "$WORK/$sys.out" | head -1)
        if [[ ${ADDR[$sys]} == fedbroker:// ]]; then
            {
                echo "run.sh: $bin ($sys) printed no 'listening on' line in 30 s; its state:"
                grep -E '^(State|Threads)' "/proc/$p/status" 2>/dev/null
                cat "/proc/$p/task/"*/stack 2>/dev/null | sort | uniq -c | sort -rn | head -5
            } | tee -a "$WORK/$sys.log" >&2
            kill "$p" 2>/dev/null || true
            wait "$p" 2>/dev/null || true
            return 1
        fi
        ;;
    mosquitto)
        port=$(free_port)
        port2=$(free_port)
        # A WebSocket listener alone does not start in 2.0.11: a plain MQTT listener comes first.
        # socket_domain ipv4 keeps the WebSocket listener on 127.0.0.1 only.
        cat >"$WORK/mosquitto.conf" <<EOF
listener $port 127.0.0.1
protocol mqtt
listener $port2 127.0.0.1
protocol websockets
socket_domain ipv4
allow_anonymous true
persistence false
log_dest stderr
log_type error
log_type warning
EOF
        "${SRV[@]}" mosquitto -c "$WORK/mosquitto.conf" >>"$WORK/mosquitto.log" 2>&1 &
        p=$!
        wait_port "$port2" "$p" mosquitto || return 1
        ADDR[$sys]=mqtt-ws://127.0.0.1:$port2
        ;;
    nats)
        port=$(free_port)
        port2=$(free_port)
        cat >"$WORK/nats.conf" <<EOF
listen: "127.0.0.1:$port"
websocket {
  listen: "127.0.0.1:$port2"
  no_tls: true
}
EOF
        "${SRV[@]}" nats-server -c "$WORK/nats.conf" >>"$WORK/nats.log" 2>&1 &
        p=$!
        wait_port "$port2" "$p" nats || return 1
        ADDR[$sys]=nats-ws://127.0.0.1:$port2
        ;;
    engine-nats | engine-nats-mailbox)
        # The cluster phase's NATS server: its client port only. The mailbox configurations' one
        # also runs JetStream (the engine keeps mailbox ids' records there, docs/cluster.md §3),
        # its store in a fresh directory removed when it stops.
        port=$(free_port)
        local js=()
        if [[ $sys == *-mailbox ]]; then
            rm -rf "$WORK/$sys-store"
            js=(-js -sd "$WORK/$sys-store")
        fi
        "${SRV[@]}" nats-server -a 127.0.0.1 -p "$port" "${js[@]}" >>"$WORK/$sys.log" 2>&1 &
        p=$!
        wait_port "$port" "$p" "$sys" || return 1
        ADDR[$sys]=nats://127.0.0.1:$port
        ;;
    engine-redis | engine-redis-mailbox)
        # The cluster phase's Redis server (sharded pub/sub needs Redis 7): loopback only, nothing
        # written to disk (the mailbox configurations' one too: their mailboxes are in its memory).
        port=$(free_port)
        "${SRV[@]}" redis-server --bind 127.0.0.1 --port "$port" --save "" --appendonly no \
            >>"$WORK/$sys.log" 2>&1 &
        p=$!
        wait_port "$port" "$p" "$sys" || return 1
        ADDR[$sys]=redis://127.0.0.1:$port
        ;;
    esac
    PID[$sys]=$p
    PIDS+=("$p")
}

stop() {
    local p=${PID[$1]}
    kill "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
    rm -rf "$WORK/$1-store" # a JetStream store (engine-nats-mailbox)
}

# Waits (up to BENCH_QUIET_WAIT s, default 60) while other builds (rustc) run on this shared machine.
quiet() {
    local i max=${BENCH_QUIET_WAIT:-60}
    for ((i = 0; i < max; i++)); do
        [[ $(pgrep -c rustc || true) == 0 ]] && return 0
        ((i == 0)) && echo "   (waiting for other builds to finish: $(pgrep -c rustc) rustc running)"
        sleep 1
    done
    echo "   (still $(pgrep -c rustc || true) rustc running after ${max} s; measuring anyway, load is recorded)"
}

relay() { # SYSTEM PAYLOAD WINDOW MESSAGES [extra args]
    local sys=$1 payload=$2 window=$3 messages=$4
    shift 4
    "${GEN[@]}" "$BENCH" relay --target "${ADDR[$sys]}" --pid "${PID[$sys]}" --listeners 16 --senders 16 --payload "$payload" \
        --window "$window" --messages "$messages" --label "$sys" --json "$RAW" "$@"
}

# record_failure SCENARIO SYSTEM ERRFILE [EXTRA_JSON]: a JSON line the report shows, and a
# non-zero exit later. EXTRA_JSON (e.g. '"listeners":100,"payload":64') places it in its table.
record_failure() {
    local msg
    msg=$(grep -m1 '^FAIL' "$3" | sed 's/\\/\\\\/g; s/"/\\"/g')
    printf '{"scenario":"%s","label":"%s","error":"%s"%s}\n' "$1" "$2" "${msg:-failed}" "${4:+,$4}" >>"$RAW"
    FAILED+=("$1 $2${4:+ ($4)}")
}

TOPICS=1000000-1999999
TOPIC=1000000
# fanout SYSTEM LISTENERS PAYLOAD MESSAGES [extra args]: one run; a failure is recorded and the
# run goes on.
fanout() {
    local sys=$1 listeners=$2 payload=$3 messages=$4 err
    shift 4
    err=$WORK/fanout-$sys-$listeners-$payload.err
    if ! "${GEN[@]}" "$BENCH" fanout --target "${ADDR[$sys]}" --pid "${PID[$sys]}" --topic "$TOPIC" \
        --listeners "$listeners" --payload "$payload" --messages "$messages" --label "$sys" --json "$RAW" "$@" 2>"$err"; then
        cat "$err" >&2
        record_failure fanout "$sys" "$err" "\"listeners\":$listeners,\"payload\":$payload"
    fi
}

# reqrep SYSTEM REQUESTERS PAYLOAD REQUESTS [extra args]
reqrep() {
    local sys=$1 k=$2 payload=$3 requests=$4 err
    shift 4
    err=$WORK/reqrep-$sys-$k-$payload.err
    if ! "${GEN[@]}" "$BENCH" reqrep --target "${ADDR[$sys]}" --pid "${PID[$sys]}" --requesters "$k" \
        --payload "$payload" --requests "$requests" --label "$sys" --json "$RAW" "$@" 2>"$err"; then
        cat "$err" >&2
        record_failure reqrep "$sys" "$err" "\"requesters\":$k,\"payload\":$payload"
    fi
}

# ---- mailbox faults ------------------------------------------------------------------------
# Mailbox ids 1-1000 with room for every message of a run (so a reconnect never meets a gap).
MAILBOX_FLAGS=(--mailbox 1-1000 --mailbox-messages 50000 --log-level warn)

# fault SYSTEM NAME STORE_SYNC(none|always|batch) [bench args...]: one fault-mode run; the bench
# starts (and kills, and restarts) the broker itself, with a fresh store directory.
fault() {
    local sys=$1 name=$2 sync=$3 err store=()
    shift 3
    err=$WORK/fault-$sys-$name.err
    if [[ $sync != none ]]; then
        rm -rf "$WORK/store-$sys-$name"
        store=(--store "$WORK/store-$sys-$name" --store-sync "$sync")
    fi
    local before
    before=$(wc -l <"$RAW")
    if ! "${GEN[@]}" "$BENCH" fault --broker-cmd "${SRV[*]} $FED_BIN/fedbroker-$sys ${MAILBOX_FLAGS[*]} ${store[*]}" \
        --broker-log "$WORK/$sys.log" --label "$sys" --json "$RAW" "$@" 2>"$err"; then
        cat "$err" >&2
        if (($(wc -l <"$RAW") > before)); then
            # It ran to the end and found a loss: its JSON line carries the error.
            FAILED+=("fault $sys $name")
        else
            record_failure fault "$sys" "$err" "\"broker\":\"$sync\",\"name\":\"$name\""
        fi
    fi
    rm -rf "$WORK/store-$sys-$name"
}

# post_status HOST:PORT ID: POSTs one byte, prints the answer's status code (bash /dev/tcp, no
# curl; in a subshell, so that a refused connection cannot end this script).
post_status() (
    exec 3<>"/dev/tcp/${1%:*}/${1##*:}" || exit 1
    printf 'POST /%s HTTP/1.1\r\nHost: %s\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx' "$2" "$1" >&3
    timeout 10 head -c 12 <&3 | cut -d' ' -f2
)

# ---- cluster -------------------------------------------------------------------------------
# cluster_ready BROKER...: waits (at most 10 s each) until each broker's engine client is
# connected: a broker answers 503 for remote ids until then, 404 (no responders) once it is.
cluster_ready() {
    local b i
    for b in "$@"; do
        for ((i = 0; i < 100; i++)); do
            [[ $(post_status "${ADDR[$b]#fedbroker://}" 2147483647) == 404 ]] && break
            sleep 0.1
        done
    done
}

# The mailbox configurations' brokers (E-mnodeN): ids 1-1000 keep their mailbox in the engine
# (docs/cluster.md §3), with the default bounds; the relay's listeners are on ids 1-16.
# MAILBOX_PROBE is in the range and never listened on.
CLUSTER_MAILBOX=(--mailbox 1-1000)
MAILBOX_PROBE=1000

# mailbox_ready BROKER...: waits (at most 10 s each) until a POST to MAILBOX_PROBE is kept (202):
# it is refused 503 while the engine cannot take it (NATS: JetStream not running). The first one
# also makes NATS's stream, so that no measured run pays for it. Says so if it never is.
mailbox_ready() {
    local b i st
    for b in "$@"; do
        for ((i = 0; i < 100; i++)); do
            st=$(post_status "${ADDR[$b]#fedbroker://}" "$MAILBOX_PROBE") || st=none
            [[ $st == 202 ]] && break
            sleep 0.1
        done
        [[ $st == 202 ]] || echo "run.sh: $b: POST /$MAILBOX_PROBE (a mailbox id) still answered '$st' after 10 s, not 202" >&2
    done
}

machine() {
    {
        echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
        echo "command: bench/run.sh${ARGS:+ $ARGS}"
        echo "cores: $(nproc)"
        ((PIN)) && echo "pinned: servers on CPU 1, load generator on CPU 0 (taskset)"
        echo "cpu: $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)"
        echo "memory: $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
        echo "kernel: $(uname -r)"
        echo "rustc: $(rustc --version)"
        echo "brokers: $FED_BIN ($(for s in "${ADAPTERS[@]}"; do printf 'fedbroker-%s %s; ' "$s" "$("$FED_BIN/fedbroker-$s" --version 2>/dev/null)"; done))"
        echo "scenarios: $SCENARIOS; systems: ${SYSTEMS[*]}"
        if ((!SMOKE)) && command -v mosquitto >/dev/null; then
            echo "mosquitto: $(mosquitto -h 2>/dev/null | head -1)"
            echo "nats-server: $(nats-server --version 2>/dev/null)"
        fi
        if ((CLUSTER)); then
            echo "cluster engines: $(nats-server --version 2>/dev/null); $(redis-server --version 2>/dev/null)"
        fi
    } >"$OUT/machine.txt"
}
ARGS="${ORIG_ARGS[*]}"

# ---- smoke ---------------------------------------------------------------------------------
if ((SMOKE)); then
    log "smoke: ${SCENARIOS//,/, } against ${SYSTEMS[*]}"
    for s in "${SYSTEMS[@]}"; do
        start "$s"
        if want relay; then
            relay "$s" 64 16 800
            relay "$s" 1024 1 320
        fi
        want latency && relay "$s" 64 16 400 --rate 2000
        if want idle; then
            "${GEN[@]}" "$BENCH" idle --target "${ADDR[$s]}" --pid "${PID[$s]}" --connections 300 --sources 4 \
                --settle 0 --label "$s" --json "$RAW"
        fi
        stop "$s"
        if want fanin && [[ $s == tokio || $s == smol || $s == std ]]; then
            start "$s" --queue-limit 2
            "${GEN[@]}" "$BENCH" fanin --target "${ADDR[$s]}" --senders 8 --messages 400 --listener-pause-us 200 \
                --label "$s" --json "$RAW"
            stop "$s"
        fi
        if want fanout || want reqrep; then
            start "$s" --topics "$TOPICS"
            if want fanout; then
                fanout "$s" 10 64 300
                fanout "$s" 100 1024 50
            fi
            if want reqrep && [[ $s != mosquitto ]]; then
                reqrep "$s" 1 64 200
                reqrep "$s" 4 1024 400
            fi
            stop "$s"
        fi
        if want fault && [[ $s == tokio || $s == smol || $s == std ]]; then
            # A few hundred messages, listeners dropping every ~50 messages; then one SIGKILL and
            # restart on a durable store (a store that lost anything fails the run).
            fault "$s" reconnect none --ids 4 --senders 2 --messages 600 --drop-prob 0.02 --offline-ms 20
            fault "$s" kill-always always --ids 4 --senders 2 --messages 600 --drop-prob 0.02 --offline-ms 20 --kills 1
        fi
    done
    if ((CLUSTER)); then
        # Two brokers sharing ids through each engine in turn: every message crosses it.
        : >"$OUT/cluster.jsonl"
        for e in nats redis; do
            start "engine-$e"
            for k in 1 2; do start "$e-node$k" --cluster "${ADDR[engine-$e]}"; done
            cluster_ready "$e-node1" "$e-node2"
            for w in 16 1; do
                "$BENCH" relay --target "${ADDR[$e-node1]}" --send-target "${ADDR[$e-node2]}" \
                    --pid "${PID[$e-node1]},${PID[$e-node2]},${PID[engine-$e]}" --listeners 16 --senders 16 \
                    --payload 64 --window "$w" --messages 800 --label "2-nodes-$e" --json "$OUT/cluster.jsonl"
            done
            for s in "$e-node1" "$e-node2" "engine-$e"; do stop "$s"; done
        done
        # The same with mailbox ids kept by the engine (NATS: JetStream): every message is
        # appended to its id's mailbox there; 202 (kept) is accepted as well as 204.
        for e in nats redis; do
            start "engine-$e-mailbox"
            for k in 1 2; do start "$e-mnode$k" --cluster "${ADDR[engine-$e-mailbox]}" "${CLUSTER_MAILBOX[@]}"; done
            cluster_ready "$e-mnode1" "$e-mnode2"
            mailbox_ready "$e-mnode1" "$e-mnode2"
            for w in 16 1; do
                "$BENCH" relay --target "${ADDR[$e-mnode1]}" --send-target "${ADDR[$e-mnode2]}" \
                    --pid "${PID[$e-mnode1]},${PID[$e-mnode2]},${PID[engine-$e-mailbox]}" --listeners 16 --senders 16 \
                    --payload 64 --window "$w" --messages 800 --accept-202 --label "2-nodes-mailbox-$e" \
                    --json "$OUT/cluster.jsonl"
            done
            for s in "$e-mnode1" "$e-mnode2" "engine-$e-mailbox"; do stop "$s"; done
        done
    fi
    "$BENCH" report --input "$RAW" --out "$OUT" --no-charts >/dev/null
    if ((${#FAILED[@]})); then
        echo "run.sh: smoke FAILED: ${FAILED[*]} (see above and $LOGS)" >&2
        exit 1
    fi
    echo "bench smoke ok: results in $OUT"
    exit 0
fi

machine
echo "load at start: $(cut -d' ' -f1-3 /proc/loadavg); cargo processes: $(pgrep -c cargo || true)" | tee -a "$OUT/machine.txt"

# ---- 1. relay ------------------------------------------------------------------------------
if want relay; then
    # fedbroker's default --queue-limit (1024) answers 503 in this scenario whenever the generator's
    # listeners fall behind its senders (a 204 means "queued", so a sender's window does not bound
    # the listener's queue); the relay is about throughput, so the queue is made large here (still
    # bounded; mosquitto queues QoS 0 without bound, nats-server up to 64 MB per subscriber).
    # The fan-in phase exercises the 503 path with a small limit.
    for s in "${SYSTEMS[@]}"; do start "$s" --queue-limit 65536; done
    log "servers: $(for s in "${SYSTEMS[@]}"; do printf '%s=%s ' "$s" "${ADDR[$s]}"; done)"

    # messages per payload and window: enough for a second or more at fedbroker's pace; 64 KiB runs
    # have a 10 s budget (mosquitto's WebSocket path crawls at that size; the result says so).
    declare -A COUNT=([64w16]=200000 [64w1]=100000 [1024w16]=100000 [1024w1]=50000
        [65536w16]=4000 [65536w1]=2000)
    n=${#SYSTEMS[@]}
    for ((round = 0; round < ROUNDS; round++)); do
        log "relay round $((round + 1))/$ROUNDS"
        quiet
        for payload in 64 1024 65536; do
            for window in 16 1; do
                for ((k = 0; k < n; k++)); do
                    s=${SYSTEMS[$(((k + round) % n))]}
                    relay "$s" "$payload" "$window" "${COUNT[${payload}w$window]}" --max-seconds 10
                done
            done
        done
    done

    # ---- 2. latency at half load ---------------------------------------------------------------
    if want latency; then
        log "latency at half of each system's measured maximum"
        for ((round = 0; round < ROUNDS; round++)); do
            quiet
            for payload in 64 1024; do
                for ((k = 0; k < n; k++)); do
                    s=${SYSTEMS[$(((k + round) % n))]}
                    max=$("$BENCH" median --input "$RAW" --label "$s" --payload "$payload" --window 16)
                    rate=$((max / 2))
                    # About 4 s of traffic at that pace.
                    relay "$s" "$payload" 16 $((rate * 4 < 16 ? 16 : rate * 4)) --rate "$rate" --max-seconds 10
                done
            done
        done
    fi
    for s in "${SYSTEMS[@]}"; do stop "$s"; done
fi

# ---- 3. idle -------------------------------------------------------------------------------
if want idle; then
    log "idle: $IDLE_CONNECTIONS listeners per system, each against a fresh instance"
    for s in "${SYSTEMS[@]}"; do
        if ! start "$s"; then
            echo "FAIL idle $s: the server did not start" >"$WORK/idle-$s.err"
            record_failure idle "$s" "$WORK/idle-$s.err"
            continue
        fi
        sleep 1
        n=$IDLE_CONNECTIONS
        if [[ $s == std ]]; then
            # fedbroker-std answers 503 beyond its thread budget (vm.max_map_count / 10, two threads
            # per connection): measure it within that budget rather than fail on a known limit.
            cap=$(($(cat /proc/sys/vm/max_map_count 2>/dev/null || echo 65530) / 10 - 64))
            if ((n > cap)); then
                log "idle std: $cap listeners, its thread budget under vm.max_map_count (BENCHMARKS.md)"
                n=$cap
            fi
        fi
        # A failure here is recorded and the run goes on (the other systems' figures still count);
        # the run exits non-zero at the end.
        if ! "${GEN[@]}" "$BENCH" idle --target "${ADDR[$s]}" --pid "${PID[$s]}" --connections "$n" \
            --label "$s" --json "$RAW" 2>"$WORK/idle-$s.err"; then
            cat "$WORK/idle-$s.err" >&2
            record_failure idle "$s" "$WORK/idle-$s.err"
        fi
        stop "$s"
    done
fi

# ---- 4. fan-in -----------------------------------------------------------------------------
if want fanin && ((${#ADAPTERS[@]})); then
    log "fan-in: 64 senders to one listener, --queue-limit 16"
    for s in "${ADAPTERS[@]}"; do
        if ! start "$s" --queue-limit 16; then
            echo "FAIL fanin $s: the server did not start" >"$WORK/fanin-$s.err"
            record_failure fanin "$s" "$WORK/fanin-$s.err"
            continue
        fi
        if ! "${GEN[@]}" "$BENCH" fanin --target "${ADDR[$s]}" --senders 64 --messages 50000 --listener-pause-us 200 \
            --label "$s" --json "$RAW" 2>"$WORK/fanin-$s.err"; then
            cat "$WORK/fanin-$s.err" >&2
            record_failure fanin "$s" "$WORK/fanin-$s.err"
        fi
        stop "$s"
    done
fi

# ---- 5. fan-out ----------------------------------------------------------------------------
# 1 publisher, L listeners on one topic. fedbroker: a fresh instance with --topics and the default
# --queue-limit (1024); the publisher never runs more than 256 messages (--lag) ahead of the
# slowest listener, so no topic listener can be closed as too slow and no peer builds a queue.
# Messages per run: about 10^5 (L = 1) to 2 × 10^6 (L = 100, 1000) deliveries; 10 s budget.
if want fanout; then
    log "fan-out: 1 publisher, 1 / 100 / 1000 listeners on one topic, 64 B and 1 KiB"
    for s in "${SYSTEMS[@]}"; do start "$s" --topics "$TOPICS"; done
    log "servers: $(for s in "${SYSTEMS[@]}"; do printf '%s=%s ' "$s" "${ADDR[$s]}"; done)"
    declare -A FAN_COUNT=([1]=100000 [100]=20000 [1000]=2000)
    n=${#SYSTEMS[@]}
    for ((round = 0; round < ROUNDS; round++)); do
        log "fan-out round $((round + 1))/$ROUNDS"
        quiet
        for listeners in 1 100 1000; do
            for payload in 64 1024; do
                for ((k = 0; k < n; k++)); do
                    s=${SYSTEMS[$(((k + round) % n))]}
                    fanout "$s" "$listeners" "$payload" "${FAN_COUNT[$listeners]}" --window 16 --lag 256 --max-seconds 10
                done
            done
        done
    done
    for s in "${SYSTEMS[@]}"; do stop "$s"; done
fi

# ---- 6. request-reply ----------------------------------------------------------------------
# K requesters with one request outstanding each, one echoing responder. mosquitto is left out:
# MQTT 3.1.1 has no request-reply.
RR_SYSTEMS=()
for s in "${SYSTEMS[@]}"; do [[ $s == mosquitto ]] || RR_SYSTEMS+=("$s"); done
if want reqrep && ((${#RR_SYSTEMS[@]})); then
    log "request-reply: 1 and 16 requesters, 64 B and 1 KiB"
    for s in "${RR_SYSTEMS[@]}"; do start "$s"; done
    log "servers: $(for s in "${RR_SYSTEMS[@]}"; do printf '%s=%s ' "$s" "${ADDR[$s]}"; done)"
    declare -A RR_COUNT=([1]=20000 [16]=100000)
    n=${#RR_SYSTEMS[@]}
    for ((round = 0; round < ROUNDS; round++)); do
        log "request-reply round $((round + 1))/$ROUNDS"
        quiet
        for k in 1 16; do
            for payload in 64 1024; do
                for ((j = 0; j < n; j++)); do
                    s=${RR_SYSTEMS[$(((j + round) % n))]}
                    reqrep "$s" "$k" "$payload" "${RR_COUNT[$k]}" --timeout-ms 5000 --max-seconds 10
                done
            done
        done
    done
    for s in "${RR_SYSTEMS[@]}"; do stop "$s"; done
fi

# ---- 7. mailbox faults and the cost of the store ------------------------------------------
if want fault && ((${#ADAPTERS[@]})); then
    log "fault: mailbox ids with listeners reconnecting with ?since=, and brokers killed (SIGKILL) and restarted"
    declare -A SYNCS
    for s in "${ADAPTERS[@]}"; do
        quiet
        fault "$s" reconnect none --ids 16 --senders 16 --messages 200000 --drop-prob 0.002
        SYNCS[$s]="none always batch"
        fault "$s" kill-always always --ids 16 --senders 16 --messages 100000 --drop-prob 0.002 --kills 3
        fault "$s" kill-batch batch --ids 16 --senders 16 --messages 100000 --drop-prob 0.002 --kills 3
    done
    log "store cost: the same load without faults, no store / --store-sync always / batch"
    for ((round = 0; round < ROUNDS; round++)); do
        quiet
        for s in "${ADAPTERS[@]}"; do
            for window in 16 1; do
                for sync in ${SYNCS[$s]}; do
                    fault "$s" "cost-$sync-w$window" "$sync" --ids 16 --senders 16 --window "$window" \
                        --messages $((window == 16 ? 100000 : 30000)) --drop-prob 0
                done
            done
        done
    done
fi

# ---- 8. cluster ---------------------------------------------------------------------------
if ((CLUSTER)); then
    ENGINES=(nats redis)
    log "cluster: fedbroker-tokio brokers sharing ids through nats-server and through redis-server; 1 node, 1 node with --cluster, 2 and 3 nodes, 1 and 2 nodes with mailbox ids"
    CRAW=$OUT/cluster.jsonl
    : >"$CRAW"
    # node0 alone (no --cluster); E-node1..3 share the id space through engine E; E-mnode1..2
    # share it through another server of engine E (engine-E-mailbox; NATS with JetStream) with
    # mailbox ids (CLUSTER_MAILBOX; every broker of a cluster needs the same mailbox flags, so they
    # get their own engine server). The relay's large queue, as in phase 1. Every broker and
    # engine runs for the whole phase (the idle ones only send a heartbeat every 2 s), so that the
    # configurations can be interleaved.
    start node0 --queue-limit 65536
    for e in "${ENGINES[@]}"; do
        start "engine-$e"
        for k in 1 2 3; do start "$e-node$k" --queue-limit 65536 --cluster "${ADDR[engine-$e]}"; done
        start "engine-$e-mailbox"
        for k in 1 2; do
            start "$e-mnode$k" --queue-limit 65536 --cluster "${ADDR[engine-$e-mailbox]}" "${CLUSTER_MAILBOX[@]}"
        done
    done
    for e in "${ENGINES[@]}"; do
        cluster_ready "$e-node1" "$e-node2" "$e-node3" "$e-mnode1" "$e-mnode2"
        mailbox_ready "$e-mnode1" "$e-mnode2"
    done
    log "servers: node0=${ADDR[node0]} $(for e in "${ENGINES[@]}"; do
        printf 'engine-%s=%s ' "$e" "${ADDR[engine-$e]}"
        for k in 1 2 3; do printf '%s-node%s=%s ' "$e" "$k" "${ADDR[$e-node$k]}"; done
        printf 'engine-%s-mailbox=%s ' "$e" "${ADDR[engine-$e-mailbox]}"
        for k in 1 2; do printf '%s-mnode%s=%s ' "$e" "$k" "${ADDR[$e-mnode$k]}"; done
    done)"
    CONFIGS=(1-node)
    for e in "${ENGINES[@]}"; do
        CONFIGS+=("1-node-cluster-$e" "2-nodes-$e" "3-nodes-$e" "1-node-cluster-mailbox-$e" "2-nodes-mailbox-$e")
    done
    # cluster_relay CONFIG WINDOW MESSAGES [extra args]: one relay run of a configuration; a
    # failure is recorded (a "cluster-failure" line in cluster.jsonl, and a non-zero exit at the
    # end) and the run goes on.
    cluster_relay() {
        local cfg=$1 window=$2 messages=$3 err args e=${1##*-}
        shift 3
        case $cfg in
        1-node) args=(--target "${ADDR[node0]}" --pid "${PID[node0]}") ;;
        # Mailbox ids: every message goes through the engine, even to a listener on its broker.
        1-node-cluster-mailbox-*) args=(--target "${ADDR[$e-mnode1]}" --pid "${PID[$e-mnode1]},${PID[engine-$e-mailbox]}"
            --accept-202) ;;
        2-nodes-mailbox-*) args=(--target "${ADDR[$e-mnode1]}" --send-target "${ADDR[$e-mnode2]}"
            --pid "${PID[$e-mnode1]},${PID[$e-mnode2]},${PID[engine-$e-mailbox]}" --accept-202) ;;
        1-node-cluster-*) args=(--target "${ADDR[$e-node1]}" --pid "${PID[$e-node1]},${PID[engine-$e]}") ;;
        2-nodes-*) args=(--target "${ADDR[$e-node1]}" --send-target "${ADDR[$e-node2]}"
            --pid "${PID[$e-node1]},${PID[$e-node2]},${PID[engine-$e]}") ;;
        3-nodes-*) args=(--target "${ADDR[$e-node1]},${ADDR[$e-node2]}" --send-target "${ADDR[$e-node3]}"
            --pid "${PID[$e-node1]},${PID[$e-node2]},${PID[$e-node3]},${PID[engine-$e]}") ;;
        esac
        err=$WORK/cluster-$cfg-$window.err
        if ! "${GEN[@]}" "$BENCH" relay "${args[@]}" --listeners 16 --senders 16 --payload 64 --window "$window" \
            --messages "$messages" --label "$cfg" --json "$CRAW" "$@" 2>"$err"; then
            cat "$err" >&2
            local msg
            msg=$(grep -m1 '^FAIL' "$err" | sed 's/\\/\\\\/g; s/"/\\"/g')
            printf '{"scenario":"cluster-failure","label":"%s","error":"%s","window":%s}\n' "$cfg" "${msg:-failed}" "$window" >>"$CRAW"
            FAILED+=("cluster $cfg window $window")
        fi
    }
    n=${#CONFIGS[@]}
    for ((round = 0; round < ROUNDS; round++)); do
        log "cluster round $((round + 1))/$ROUNDS"
        quiet
        for window in 16 1; do
            for ((k = 0; k < n; k++)); do
                # About 1–2 s on one broker, cut at 10 s through an engine (the result says so).
                cluster_relay "${CONFIGS[$(((k + round) % n))]}" "$window" $((window == 16 ? 1000000 : 200000)) --max-seconds 10
            done
        done
        # Latency at a fixed, moderate pace every configuration sustains: 4 s of traffic.
        for ((k = 0; k < n; k++)); do
            cluster_relay "${CONFIGS[$(((k + round) % n))]}" 16 20000 --rate 5000 --max-seconds 10
        done
    done
    for e in "${ENGINES[@]}"; do
        for k in 1 2 3; do stop "$e-node$k"; done
        for k in 1 2; do stop "$e-mnode$k"; done
    done
    stop node0
    for e in "${ENGINES[@]}"; do
        stop "engine-$e"
        stop "engine-$e-mailbox"
    done
    "$BENCH" report --input "$CRAW" --out "$OUT/cluster" --peers 1-node --no-charts
    echo "cluster table: $OUT/cluster/table.md (ratios are to 1-node)"
fi

echo "load at end: $(cut -d' ' -f1-3 /proc/loadavg); cargo processes: $(pgrep -c cargo || true)" | tee -a "$OUT/machine.txt"
if [[ ! -s $RAW ]]; then
    rm -f "$RAW" # only the cluster phase ran: its lines are in cluster.jsonl
else
    log "results"
    "$BENCH" report --input "$RAW" --out "$OUT"
    echo "raw: $RAW; table: $OUT/table.md; charts: $OUT/*.svg; machine: $OUT/machine.txt; server logs: $LOGS"
fi
if ((${#FAILED[@]})); then
    echo "run.sh: FAILED: ${FAILED[*]} (see above and $LOGS)" >&2
    exit 1
fi
