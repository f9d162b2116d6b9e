#!/usr/bin/env bash
# shellcheck disable=SC2317 # cleanup, port_open and redis_ping are called through the traps and wait_until
# A fedbroker cluster on this machine, on loopback: an engine (nats-server, or redis-server with
# --engine redis), three brokers sharing one id space through it (--cluster, docs/cluster.md) and
# nginx as the one address in front of them (deploy/cluster/nginx.conf, round robin, the same file
# for both engines). Ids 9000-9999 (--mailbox) keep a mailbox (docs/mailbox.md), kept by the engine
# and shared by the three brokers: a JetStream stream with NATS (nats-server -js), a stream per id
# with Redis. It prints that address and runs until Ctrl-C (or SIGTERM), then stops everything it
# started.
#
#   deploy/cluster/run.sh                        # nginx on 127.0.0.1:8080, brokers on 8081-8083,
#                                                # NATS on 4222 (the ports of nginx.conf)
#   deploy/cluster/run.sh --engine redis         # the same with redis-server on 6379 in place of NATS
#   deploy/cluster/run.sh --free-ports           # free ports picked for all five
#   deploy/cluster/run.sh --port 9000            # nginx on 9000, brokers on 9001-9003, NATS on 4222
#   deploy/cluster/run.sh --bin-dir target/release   # the broker binary from there
#   deploy/cluster/run.sh --keep-going           # a broker that exits leaves the other two running
#   deploy/cluster/run.sh -- --ping-interval 5   # more flags for every broker
#
# Options:
#   --bin-dir DIR     where fedbroker-tokio (or --broker NAME) is (default: target/debug of this
#                     repository; build it with `cargo build -p fedbroker-tokio`)
#   --broker NAME     fedbroker-tokio (default), fedbroker-smol or fedbroker-std
#   --engine ENGINE   nats (default: nats-server with JetStream, its store in DIR/jetstream, brokers
#                     with --cluster nats://127.0.0.1:PORT) or redis (redis-server >= 7, in memory
#                     only, brokers with --cluster redis://127.0.0.1:PORT: sharded pub/sub, streams)
#   --mailbox RANGE   the ids that keep a mailbox, in the engine (default 9000-9999: an id, FROM-TO
#                     or *, as the broker's --mailbox; none for no mailbox at all)
#   --port PORT       nginx's port (default 8080); the brokers take the next three
#   --nats-port PORT  nats-server's client port (default 4222; with --engine nats)
#   --redis-port PORT redis-server's port (default 6379; with --engine redis)
#   --free-ports      pick free ports for everything instead
#   --dir DIR         configs, logs and pid files here (default: a new temp dir, removed at exit
#                     unless something failed or --keep is given)
#   --keep            keep the temp dir
#   --keep-going      when a broker exits, go on with the others (nginx skips it) as long as one is
#                     left; by default any of the five exiting stops everything
#   --ready FILE      once everything answers, write the addresses there as shell assignments
#                     (NGINX_URL, BROKER_URLS, BROKER_PIDS, NGINX_PID, DIR, MAILBOX; ENGINE (nats or
#                     redis), ENGINE_URL, ENGINE_PID; with NATS also NATS_URL and NATS_PID, as before);
#                     used by deploy/cluster/test.sh
#
# Needs nginx and the engine's server: nats-server 2.9 or later (Debian package nats-server) or
# redis-server 7 or later (Debian package redis-server; only its binary is used, never its system
# service): apt-get install nginx nats-server redis-server; nothing is installed here. Also curl,
# perl, and python3 for --free-ports. Nothing listens on anything but 127.0.0.1, and redis-server
# keeps nothing on disk (--save "" --appendonly no: its mailboxes live as long as it runs);
# nats-server keeps JetStream's files in DIR/jetstream. If any of the five processes exits, the
# others are stopped too and the script exits 1 (with --keep-going: nginx, the engine or the last
# broker).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$ROOT/deploy/cluster
BIN_DIR=$ROOT/target/debug
BROKER=fedbroker-tokio
PORT=8080
ENGINE=nats
NATS_PORT=4222
REDIS_PORT=6379
FREE=0
DIR=
KEEP=0
READY=
MAILBOX=9000-9999
KEEP_GOING=0
EXTRA=()
while (($#)); do
    case $1 in
    --bin-dir) BIN_DIR=$2 && shift ;;
    --broker) BROKER=$2 && shift ;;
    --port) PORT=$2 && shift ;;
    --engine) ENGINE=$2 && shift ;;
    --nats-port) NATS_PORT=$2 && shift ;;
    --redis-port) REDIS_PORT=$2 && shift ;;
    --free-ports) FREE=1 ;;
    --dir) DIR=$2 && KEEP=1 && shift ;;
    --keep) KEEP=1 ;;
    --keep-going) KEEP_GOING=1 ;;
    --mailbox) MAILBOX=$2 && shift ;;
    --ready) READY=$2 && shift ;;
    --)
        shift
        EXTRA=("$@")
        break
        ;;
    -h | --help)
        sed -n '3,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
        exit 0
        ;;
    *)
        echo "run.sh: unknown argument '$1' (try --help)" >&2
        exit 2
        ;;
    esac
    shift
done

say() { printf 'cluster: %s\n' "$*" >&2; }
die() {
    say "$*"
    exit 1
}

PATH=$PATH:/usr/sbin:/usr/local/sbin
BIN=$BIN_DIR/$BROKER
[[ -x $BIN ]] || die "no executable $BIN (build it: cargo build -p $BROKER, or give --bin-dir)"
case $ENGINE in
nats)
    ENGINE_NAME=NATS
    ENGINE_PORT=$NATS_PORT
    ENGINE_BIN=$(command -v nats-server) || die "nats-server is not installed (Debian: apt-get install nats-server)"
    ;;
redis)
    ENGINE_NAME=Redis
    ENGINE_PORT=$REDIS_PORT
    ENGINE_BIN=$(command -v redis-server) || die "redis-server is not installed (Debian: apt-get install redis-server)"
    # Sharded pub/sub (SSUBSCRIBE, SPUBLISH) is Redis 7.0 or later.
    v=$("$ENGINE_BIN" --version 2>/dev/null | sed -n 's/.* v=\([0-9][0-9]*\)\..*/\1/p')
    if [[ -z $v ]] || ((v < 7)); then
        die "$ENGINE_BIN is not Redis 7 or later: $("$ENGINE_BIN" --version 2>&1)"
    fi
    ;;
*)
    echo "run.sh: --engine nats or --engine redis, not '$ENGINE' (try --help)" >&2
    exit 2
    ;;
esac
NGINX=$(command -v nginx) || die "nginx is not installed (Debian: apt-get install nginx)"
command -v curl >/dev/null || die "curl is not installed"

if ((FREE)); then
    read -r PORT ENGINE_PORT B1 B2 B3 < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(5)]
for s in ss: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in ss))') || die "could not pick free ports (python3)"
else
    B1=$((PORT + 1)) B2=$((PORT + 2)) B3=$((PORT + 3))
fi
BROKER_PORTS=("$B1" "$B2" "$B3")

if [[ -z $DIR ]]; then
    DIR=$(mktemp -d "${TMPDIR:-/tmp}/fedbroker-cluster.XXXXXX")
else
    mkdir -p "$DIR"
    DIR=$(cd "$DIR" && pwd)
fi
# nginx's workers run as nobody when it is started as root: they must reach the prefix directory.
chmod 755 "$DIR"

PIDS=()
NAMES=()
FAILED=0
cleanup() {
    local rc=$? i p
    trap - EXIT INT TERM
    # nginx first (no new requests), then the brokers (they close their listeners with 1001),
    # the engine (NATS or Redis) last.
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        kill -TERM "${PIDS[$i]}" 2>/dev/null || true
    done
    for p in "${PIDS[@]}"; do
        for ((i = 0; i < 100; i++)); do
            kill -0 "$p" 2>/dev/null || break
            sleep 0.05
        done
        kill -KILL "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    if ((rc != 0 && rc != 130 && rc != 143)) || ((FAILED)); then
        say "configs and logs kept in $DIR"
    elif ((!KEEP)); then
        rm -rf "$DIR"
    fi
    ((${#PIDS[@]})) && say "stopped"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# spawn NAME COMMAND...: in the background, its output in DIR/NAME.log.
spawn() {
    local name=$1
    shift
    "$@" >"$DIR/$name.log" 2>&1 &
    PIDS+=("$!")
    NAMES+=("$name")
}

alive() { kill -0 "${PIDS[-1]}" 2>/dev/null; }

# wait_until SECONDS WHAT COMMAND...: retries COMMAND every 50 ms while the last process spawned runs.
wait_until() {
    local secs=$1 what=$2 i
    shift 2
    for ((i = 0; i < secs * 20; i++)); do
        "$@" 2>/dev/null && return 0
        alive || {
            FAILED=1
            die "${NAMES[-1]} exited at start: $(tail -n 5 "$DIR/${NAMES[-1]}.log")"
        }
        sleep 0.05
    done
    FAILED=1
    die "${NAMES[-1]}: $what within $secs s (log: $DIR/${NAMES[-1]}.log)"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# redis_ping PORT: Redis answers PING with +PONG (not only accepts the connection).
redis_ping() {
    (
        exec 3<>"/dev/tcp/127.0.0.1/$1"
        printf 'PING\r\n' >&3
        IFS= read -r -t 1 line <&3
        [[ $line == +PONG* ]]
    ) 2>/dev/null
}

# ---- the engine: NATS or Redis -----------------------------------------------------------------
case $ENGINE in
nats)
    # JetStream (-js) keeps the mailboxes (a stream, FEDBROKER_MAILBOX); its files in DIR/jetstream.
    # Without it, the brokers answer 503 for mailbox ids. nats-server opens its client port once
    # JetStream is up.
    spawn nats "$ENGINE_BIN" -a 127.0.0.1 -p "$ENGINE_PORT" -js -sd "$DIR/jetstream"
    wait_until 10 "no client port 127.0.0.1:$ENGINE_PORT" port_open "$ENGINE_PORT"
    ;;
redis)
    # In memory only (no RDB snapshot, no AOF), on loopback only, in the foreground.
    spawn redis "$ENGINE_BIN" --bind 127.0.0.1 --port "$ENGINE_PORT" --save "" --appendonly no
    wait_until 10 "no PONG on 127.0.0.1:$ENGINE_PORT" redis_ping "$ENGINE_PORT"
    ;;
esac
ENGINE_PID=${PIDS[-1]}
ENGINE_URL=$ENGINE://127.0.0.1:$ENGINE_PORT

# ---- three brokers ---------------------------------------------------------------------------
# Each with the same --mailbox: a mailbox id's messages are kept in the engine, one seq per id
# whichever broker a POST reaches, and replayed (GET /ID?since=SEQ) by any broker.
MAILBOX_FLAGS=()
[[ $MAILBOX == none ]] || MAILBOX_FLAGS=(--mailbox "$MAILBOX")
BROKER_URLS=()
BROKER_PIDS=()
for i in 0 1 2; do
    p=${BROKER_PORTS[$i]}
    spawn "broker-$((i + 1))" "$BIN" --listen "127.0.0.1:$p" --cluster "$ENGINE_URL" "${MAILBOX_FLAGS[@]}" "${EXTRA[@]}"
    wait_until 10 "no 'listening on' line" grep -q "^listening on http://127.0.0.1:$p\$" "$DIR/broker-$((i + 1)).log"
    # Until its engine client is connected, a broker answers 503 for ids it does not hold itself.
    wait_until 10 "not connected to $ENGINE_NAME" grep -q 'cluster engine: connected' "$DIR/broker-$((i + 1)).log"
    BROKER_URLS+=("http://127.0.0.1:$p")
    BROKER_PIDS+=("${PIDS[-1]}")
done

# ---- nginx -----------------------------------------------------------------------------------
# deploy/cluster/nginx.conf with this run's ports. Each replaced string must be in the file, so that
# the file and this script cannot drift apart silently.
CONF=$DIR/nginx.conf
cp "$HERE/nginx.conf" "$CONF"
subst() {
    grep -qF -- "$1" "$CONF" || die "deploy/cluster/nginx.conf no longer contains '$1'"
    FROM=$1 TO=$2 perl -0pi -e 's/\Q$ENV{FROM}\E/$ENV{TO}/g' "$CONF"
}
subst "listen 127.0.0.1:8080;" "listen 127.0.0.1:$PORT;"
subst "server 127.0.0.1:8081;" "server 127.0.0.1:$B1;"
subst "server 127.0.0.1:8082;" "server 127.0.0.1:$B2;"
subst "server 127.0.0.1:8083;" "server 127.0.0.1:$B3;"
GLOBAL="daemon off;"
# Started as root, nginx runs its workers as an unprivileged user (Debian's is nobody:nogroup).
if ((EUID == 0)); then
    GLOBAL+=" user nobody $(getent group nogroup >/dev/null && echo nogroup || echo nobody);"
fi
"$NGINX" -t -q -p "$DIR" -c "$CONF" -e "$DIR/error.log" -g "$GLOBAL" >"$DIR/nginx-t.log" 2>&1 || {
    FAILED=1
    die "nginx -t refuses the config: $(tr '\n' ' ' <"$DIR/nginx-t.log")"
}
spawn nginx "$NGINX" -p "$DIR" -c "$CONF" -e "$DIR/error.log" -g "$GLOBAL"
NGINX_PID=${PIDS[-1]}
NGINX_URL=http://127.0.0.1:$PORT
wait_until 10 "no answer on $NGINX_URL/healthz" curl -sf -o /dev/null --max-time 1 "$NGINX_URL/healthz"

if [[ -n $READY ]]; then
    {
        printf 'NGINX_URL=%q\nNGINX_PID=%q\nENGINE=%q\nENGINE_URL=%q\nENGINE_PID=%q\nDIR=%q\nMAILBOX=%q\n' \
            "$NGINX_URL" "$NGINX_PID" "$ENGINE" "$ENGINE_URL" "$ENGINE_PID" "$DIR" "$MAILBOX"
        # The names of before --engine, for NATS.
        if [[ $ENGINE == nats ]]; then
            printf 'NATS_URL=%q\nNATS_PID=%q\n' "$ENGINE_URL" "$ENGINE_PID"
        fi
        printf 'BROKER_URLS=(%s)\nBROKER_PIDS=(%s)\n' "${BROKER_URLS[*]}" "${BROKER_PIDS[*]}"
    } >"$READY.part"
    mv "$READY.part" "$READY"
fi

MAILBOX_LINE="no mailbox ids (--mailbox none)"
if [[ $MAILBOX != none ]]; then
    m=${MAILBOX%%-*}
    [[ $m =~ ^[0-9]+$ ]] || m=9000
    MAILBOX_LINE="mailbox ids $MAILBOX, kept by $ENGINE_NAME: curl -i --data-binary hi $NGINX_URL/$m   (202, Fedbroker-Seq: N)
        then   websocat -b 'ws://127.0.0.1:$PORT/$m?since=0'   on any broker"
fi
cat <<EOF
fedbroker cluster: $NGINX_URL
  nginx (round robin) -> ${BROKER_URLS[*]}
  ${BROKER} --cluster $ENGINE_URL ($ENGINE_NAME); logs and configs in $DIR
  try: websocat -b ws://127.0.0.1:$PORT/42   and   curl -i --data-binary hi $NGINX_URL/42
  $MAILBOX_LINE
Ctrl-C stops it.
EOF

# Runs until a signal, or until one of the five exits (then everything stops, exit 1). With
# --keep-going, a broker that exits is reported and the rest go on (nginx skips it), until nginx,
# the engine or the last broker exits.
declare -A GONE=()
while :; do
    live=()
    for i in "${!PIDS[@]}"; do
        [[ -n ${GONE[$i]:-} ]] || live+=("${PIDS[$i]}")
    done
    rc=0 pid=
    wait -n -p pid "${live[@]}" || rc=$?
    stop=0
    brokers=0
    for i in "${!PIDS[@]}"; do
        [[ -n ${GONE[$i]:-} ]] && continue
        if kill -0 "${PIDS[$i]}" 2>/dev/null && ! grep -q '^State:.*Z' "/proc/${PIDS[$i]}/status" 2>/dev/null; then
            [[ ${NAMES[$i]} == broker-* ]] && brokers=$((brokers + 1))
            continue
        fi
        GONE[$i]=1
        FAILED=1
        say "${NAMES[$i]} exited$([[ ${PIDS[$i]} == "$pid" ]] && echo " (status $rc)"): $(tail -n 3 "$DIR/${NAMES[$i]}.log" | tr '\n' ' ')"
        [[ ${NAMES[$i]} == broker-* ]] || stop=1
    done
    if ((!KEEP_GOING || stop || brokers == 0)); then
        exit 1
    fi
    say "--keep-going: $brokers broker(s) left behind nginx"
done
