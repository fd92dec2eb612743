#!/usr/bin/env bash
# The benchmark suite: `bench/run.sh` from anywhere in the repository.
#
# Builds release binaries (the router, `examples/bare_warp.rs`, `examples/loadgen.rs`), then,
# all on 127.0.0.1, reports in one table:
#   (1) acknowledgement throughput and p50/p99 of POST /webhooks/smartlead, router with the
#       SQLite store (durable) against a bare warp server that parses the JSON and answers 200,
#       with the CPU time each server and the load generator spent per request (from /proc);
#       and, for comparison only, the same bare server committing each body to SQLite with
#       grouped commits (the issue's reference point for durability alone) and the router's
#       intake alone (a rule that delivers nothing);
#   (2) end to end: events/s delivered at saturation, and p50/p99 from POST to arrival at the
#       sink (loadgen's Slack stand-in) at a fixed open-loop rate;
#   (3) rule matching and rendering per event for 10 to 10,000 rules (criterion,
#       benches/match_render.rs);
#   (4) reload time of 10,000 generated rules via POST /-/reload under load, each after an edit
#       of one rule (as a user saving a change), and the requests that failed meanwhile;
#   (5) the router's peak RSS (VmHWM from /proc; reset to the current RSS before (4));
#   (2b) the sustained capacity: the highest open-loop rate (bisected up to the reference's
#       rate) at which every event is delivered with POST-to-arrival p99 within 100 ms over
#       BENCH_CAPACITY_SECONDS (30); and, at saturation, the share delivered while the load ran;
#   with BENCH_POSTGRES_URL (a scratch database), the router's intake alone on PostgreSQL beside
#       the same on SQLite, and the sustained capacity of one router on it against two sharing
#       it (the load spread over both);
#   (6) CPU instructions per event, counted by valgrind's callgrind (repeatable whatever the
#       machine's noise): the reference per request, the router's intake per event, and the
#       router per event delivered; each the difference between a run of BENCH_CG_LARGE and
#       one of BENCH_CG_SMALL requests (1200 and 200), so that starting and stopping cancel out.
# Uses wrk for (1) as well when it is installed (its figures are then the ones judged); the
# loadgen alone is enough. Exit 0 when every target is met, 1 otherwise.
#
# Settings (environment): BENCH_SECONDS (10, per run), BENCH_CONNECTIONS (50), BENCH_RATE
# (1000 events/s), BENCH_RULES (10000), BENCH_LOG_LEVEL (info, the router's default),
# BENCH_CAPACITY_SECONDS (30) and BENCH_CAPACITY_STEPS (5, rates tried; 0 skips the search),
# BENCH_POSTGRES_URL (unset: no PostgreSQL rows), BENCH_MICRO=0 to skip criterion, BENCH_CALLGRIND=0 to skip (6), BENCH_KEEP=1 to keep the temporary directory (logs, store),
# BENCH_BODY=payload.json (absolute or from the repository's root) for another SmartLead payload
# than the default, the documentation's EMAIL_REPLIED sample of about 600 bytes (the size the
# targets were set with; `tests/fixtures/smartlead/` has real payloads of up to 2.8 KB).
# The load generator runs on the same machine and takes a share of its cores.

set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

secs="${BENCH_SECONDS:-10}"
connections="${BENCH_CONNECTIONS:-50}"
rate="${BENCH_RATE:-1000}"
rule_count="${BENCH_RULES:-10000}"
log_level="${BENCH_LOG_LEVEL:-info}"
body_args=()
if [ -n "${BENCH_BODY:-}" ]; then
    body_args=(--body "$BENCH_BODY")
fi

# The router must see only the flags given here (no admin token, no other store).
while read -r name; do
    unset "$name"
done < <(compgen -e | grep '^SWITCHBOARD_' || true)

tmp="$(mktemp -d "${TMPDIR:-/tmp}/switchboard-bench.XXXXXX")"
results="$tmp/results.jsonl"
: >"$results"
pids=()

cleanup() {
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [ -n "${BENCH_KEEP:-}" ]; then
        echo "kept $tmp"
    else
        rm -rf "$tmp"
    fi
}
trap cleanup EXIT

# Forgets a process that has ended, so that the cleanup never signals a pid reused since.
forget() { # pid
    local kept=() pid
    for pid in "${pids[@]}"; do
        if [ "$pid" != "$1" ]; then
            kept+=("$pid")
        fi
    done
    pids=("${kept[@]}")
}

# Stops a process started here and forgets it.
stop() { # pid
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    forget "$1"
}

# Appends the router's memory high-water mark and current RSS (KiB) to the results.
record_rss() { # label pid
    local hwm rss
    hwm="$(awk '/^VmHWM:/ {print $2}' "/proc/$2/status")"
    rss="$(awk '/^VmRSS:/ {print $2}' "/proc/$2/status")"
    echo "{\"kind\":\"rss\",\"label\":\"$1\",\"vmhwm_kib\":$hwm,\"vmrss_kib\":$rss}" | tee -a "$results"
}

# Starts the router on 127.0.0.1:PORT with the rules in DIR and the store STORE, its log in
# $tmp/NAME.log, and waits until it is ready; its pid goes to started_pid. Further arguments go
# to `serve`.
start_router() { # name port rules_dir store [serve args…]
    local name="$1" port="$2" rules="$3" store="$4"
    shift 4
    (cd "$tmp" && exec "$switchboard" serve --listen "127.0.0.1:$port" \
        --rules "$rules" --templates "$root/templates" --store "$store" \
        --log-level "$log_level" "$@") >"$tmp/$name.log" 2>&1 &
    started_pid=$!
    pids+=("$started_pid")
    "$loadgen" wait --url "http://127.0.0.1:$port/readyz" --timeout 60 || {
        tail -20 "$tmp/$name.log"
        exit 1
    }
}

# Runs wrk with the loadgen's script (distinct bodies) and appends its JSON line.
run_wrk() { # label url
    "$loadgen" wrk-script --label "$1" --connections "$connections" "${body_args[@]}" >"$tmp/$1.lua"
    wrk -t2 -c"$connections" -d"${secs}s" --timeout 10s --latency -s "$tmp/$1.lua" "$2" \
        >"$tmp/wrk-$1.txt" 2>&1 || true
    grep '^{"kind":"wrk"' "$tmp/wrk-$1.txt" | tee -a "$results" || echo "wrk ($1) printed no result: see $tmp/wrk-$1.txt"
}

echo "== build (release)"
cargo build --release --locked --bin switchboard --example bare_warp --example loadgen
target_dir="$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
switchboard="$target_dir/release/switchboard"
loadgen="$target_dir/release/examples/loadgen"
bare_warp="$target_dir/release/examples/bare_warp"

have_wrk=""
if command -v wrk >/dev/null 2>&1; then
    have_wrk=1
fi
echo "== $(nproc) cores, $(uname -sr), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), wrk: ${have_wrk:+yes}${have_wrk:-no}"

if [ "${BENCH_MICRO:-1}" != "0" ]; then
    echo "== (3) matching and rendering: cargo bench --bench match_render"
    cargo bench --locked --bench match_render -- --output-format bencher | tee "$tmp/criterion.txt"
fi

read -r bare_port router_port sink_port intake_port pg_one_port pg_two_port < <("$loadgen" free-ports --count 6 | tr '\n' ' '; echo)
sink="127.0.0.1:$sink_port"

echo "== (1) bare warp baseline on 127.0.0.1:$bare_port"
"$bare_warp" "127.0.0.1:$bare_port" 2>"$tmp/bare_warp.log" &
bare_pid=$!
pids+=("$bare_pid")
"$loadgen" wait --url "http://127.0.0.1:$bare_port/healthz"
"$loadgen" closed --label bare --url "http://127.0.0.1:$bare_port/webhooks/smartlead" \
    --connections "$connections" --duration "$secs" --server-pid "$bare_pid" "${body_args[@]}" |
    tee -a "$results"
if [ -n "$have_wrk" ]; then
    run_wrk bare "http://127.0.0.1:$bare_port/webhooks/smartlead"
fi
stop "$bare_pid"

# The issue's reference point for durability alone (not judged): the same bare server, each
# body committed to SQLite (WAL, synchronous=FULL) with grouped commits before its 200.
echo "== (1) bare warp with a SQLite group commit (reference) on 127.0.0.1:$bare_port"
"$bare_warp" "127.0.0.1:$bare_port" --sqlite "$tmp/reference.db" 2>"$tmp/bare_commit.log" &
bare_pid=$!
pids+=("$bare_pid")
"$loadgen" wait --url "http://127.0.0.1:$bare_port/healthz"
"$loadgen" closed --label bare-commit --url "http://127.0.0.1:$bare_port/webhooks/smartlead" \
    --connections "$connections" --duration "$secs" --server-pid "$bare_pid" "${body_args[@]}" |
    tee -a "$results"
stop "$bare_pid"

# Intake alone: the router with a rule that matches none of the load's events, so nothing is
# delivered meanwhile (not judged: it shows what the deliveries cost in the judged run below).
echo "== (1) router, intake alone, on 127.0.0.1:$intake_port, store sqlite://$tmp/intake.db"
mkdir -p "$tmp/intake-rules"
cat >"$tmp/intake-rules/00-none.yaml" <<EOF
# Matches none of the load's events (whatever BENCH_BODY posts): no payload has this field.
rules:
  - name: never
    when:
      event: EMAIL_UNSUBSCRIBED
      fields:
        raw.switchboard_bench_never: set
    actions:
      - log: { message: "{{lead.email}} unsubscribed" }
EOF
start_router intake "$intake_port" "$tmp/intake-rules" "sqlite://$tmp/intake.db"
intake_pid=$started_pid
"$loadgen" closed --label intake --url "http://127.0.0.1:$intake_port/webhooks/smartlead" \
    --connections "$connections" --duration "$secs" --server-pid "$intake_pid" "${body_args[@]}" |
    tee -a "$results"
stop "$intake_pid"

if [ -n "${BENCH_POSTGRES_URL:-}" ]; then
    echo "== (1) router, intake alone, on 127.0.0.1:$intake_port, store PostgreSQL"
    start_router intake-postgres "$intake_port" "$tmp/intake-rules" "$BENCH_POSTGRES_URL"
    "$loadgen" closed --label intake-postgres --url "http://127.0.0.1:$intake_port/webhooks/smartlead" \
        --connections "$connections" --duration "$secs" --server-pid "$started_pid" "${body_args[@]}" |
        tee -a "$results"
    stop "$started_pid"
fi

# Rule memory (judged): the shipped rules (hot-lead counts opens and keeps `once` and
# `unless_seen`, bounce-spike counts a window) against the same rules with their memory keys
# taken out, on a mix of real payloads (sends, opens, a click, a reply, a bounce); two rounds,
# alternated. The memory is decided in the intake transaction, so it is intake that pays.
echo "== (1) router intake with the shipped rules, with and without rule memory"
fixtures="$root/tests/fixtures/smartlead"
mix=()
for f in real_10_email_sent real_10_email_sent real_11_email_open real_11_email_open \
    real_11_email_open real_12_email_link_click real_13_email_reply real_15_email_bounce; do
    mix+=(--mix "$fixtures/$f.json")
done
mkdir -p "$tmp/stateless-rules" "$tmp/stateful-rules"
cp rules/rules.yaml "$tmp/stateful-rules/rules.yaml"
grep -Ev '^ +(once|fire|window|digest|max_events|list):|^ +key: "\{\{default campaign.id|^ +unless_seen:|^ +same: "\{\{lead.email\}\}"|^ +within: 30d|^ +event: \[EMAIL_REPLIED, EMAIL_BOUNCED, EMAIL_UNSUBSCRIBED\]' \
    rules/rules.yaml |
    # Without `digest:` the digest rule sends each event alone: a plain message for it.
    sed 's|template: slack/engagement-digest.json.hbs|text: "{{lead.email}}"|' \
        >"$tmp/stateless-rules/rules.yaml"
"$switchboard" check --rules "$tmp/stateless-rules/rules.yaml" --templates "$root/templates" >/dev/null
for round in 1 2; do
    for variant in stateless stateful; do
        start_router "$variant-$round" "$intake_port" "$tmp/$variant-rules" \
            "sqlite://$tmp/$variant-$round.db"
        "$loadgen" closed --label "intake-$variant" --url "http://127.0.0.1:$intake_port/webhooks/smartlead" \
            --connections "$connections" --duration "$secs" --server-pid "$started_pid" "${mix[@]}" |
            tee -a "$results"
        stop "$started_pid"
    done
done

# One destination takes every delivery here, so its limit is raised from the default 4 (which
# protects a real Slack channel) to the worker count.
echo "== router on 127.0.0.1:$router_port, store sqlite://$tmp/bench.db, sink $sink"
mkdir -p "$tmp/rules"
cat >"$tmp/rules/00-sink.yaml" <<EOF
# Every event is posted to the loadgen's sink with its id, so its arrival can be timed.
rules:
  - name: bench-sink
    actions:
      - http:
          url: 'http://$sink/notify'
          allow_private: true
          body: '{"event_id": "{{event_id}}"}'
EOF
# The load generator stands in for SmartLead's many senders from one address: the open loops
# open a connection per request in flight, past the per-client limit (100) that guards against
# one misbehaving client.
start_router router "$router_port" "$tmp/rules" "sqlite://$tmp/bench.db" \
    --concurrency 64 --per-destination 64 --max-connections 4000 --max-connections-per-client 4000
router_pid=$started_pid
webhook="http://127.0.0.1:$router_port/webhooks/smartlead"

echo "== (1)(2) router acknowledgement and delivery at saturation, $connections connections"
# The loadgen keeps its sink up until the backlog is delivered (at most 300 s), so that the
# next run starts on an idle router.
"$loadgen" closed --label router --url "$webhook" --sink "$sink" \
    --connections "$connections" --duration "$secs" --drain-timeout 300 \
    --server-pid "$router_pid" "${body_args[@]}" | tee -a "$results"
if [ -n "$have_wrk" ]; then
    "$loadgen" sink --label wrk-router --sink "$sink" --idle 3 --max 300 >>"$results" &
    sink_pid=$!
    pids+=("$sink_pid")
    "$loadgen" wait --url "http://$sink/"
    run_wrk router "$webhook"
    wait "$sink_pid" || true
    forget "$sink_pid"
fi

echo "== (2) open loop, $rate events/s"
"$loadgen" open --label open --url "$webhook" --sink "$sink" \
    --rate "$rate" --duration "$secs" "${body_args[@]}" | tee -a "$results"
record_rss load "$router_pid"

capacity_secs="${BENCH_CAPACITY_SECONDS:-30}"
capacity_steps="${BENCH_CAPACITY_STEPS:-5}"
reference_rps="$(sed -n 's/.*"label":"bare-commit".*"rps":\([0-9.]*\).*/\1/p' "$results" | tail -1)"
if [ "$capacity_steps" != "0" ] && [ -n "$reference_rps" ]; then
    echo "== (2) sustained capacity: open loops of $capacity_secs s, bisected up to $reference_rps events/s"
    "$loadgen" capacity --label capacity --url "$webhook" --sink "$sink" \
        --duration "$capacity_secs" --max-rate "$reference_rps" --steps "$capacity_steps" \
        --drain-timeout 120 "${body_args[@]}" | tee -a "$results"
fi

# Scaling out (judged): one router on PostgreSQL, then two on the same database with the load
# spread over both. One router's search spans 0 to its intake alone on PostgreSQL; two
# routers' spans 0 to 2.5 times one's, so that a ratio of 1.6 can be reached and is resolved as
# finely. Each rate starts on a vacuumed database, as autovacuum would keep it.
if [ -n "${BENCH_POSTGRES_URL:-}" ] && [ "$capacity_steps" != "0" ] && [ -n "$reference_rps" ]; then
    pg_args=(--concurrency 64 --per-destination 64 --max-connections 4000 --max-connections-per-client 4000)
    pg_search=(--sink "$sink" --duration "$capacity_secs" --steps "$capacity_steps"
        --drain-timeout 120 --vacuum "$BENCH_POSTGRES_URL" "${body_args[@]}")
    # One router cannot sustain more than its intake alone acknowledged on PostgreSQL: the
    # search starts there rather than at the reference's rate, whose overload would leave a
    # backlog the next rates are measured on.
    intake_pg_rps="$(sed -n 's/.*"label":"intake-postgres".*"rps":\([0-9.]*\).*/\1/p' "$results" | tail -1)"
    one_max="${intake_pg_rps:-$reference_rps}"
    echo "== (2) sustained capacity on PostgreSQL, one router, up to $one_max events/s"
    start_router capacity-postgres-1 "$pg_one_port" "$tmp/rules" "$BENCH_POSTGRES_URL" "${pg_args[@]}"
    pg_one_pid=$started_pid
    "$loadgen" capacity --label capacity-postgres-1 --max-rate "$one_max" \
        --url "http://127.0.0.1:$pg_one_port/webhooks/smartlead" "${pg_search[@]}" | tee -a "$results"
    one_rate="$(sed -n 's/.*"label":"capacity-postgres-1".*"rate":\([0-9.]*\),"runs".*/\1/p' "$results" | tail -1)"
    two_max="$(awk -v one="${one_rate:-0}" -v ref="$reference_rps" 'BEGIN { m = 2.5 * one; print (m > 0 ? m : ref) }')"
    echo "== (2) sustained capacity on PostgreSQL, two routers on one database, up to $two_max events/s"
    start_router capacity-postgres-2 "$pg_two_port" "$tmp/rules" "$BENCH_POSTGRES_URL" "${pg_args[@]}"
    pg_two_pid=$started_pid
    "$loadgen" capacity --label capacity-postgres-2 --max-rate "$two_max" \
        --url "http://127.0.0.1:$pg_one_port/webhooks/smartlead" \
        --url "http://127.0.0.1:$pg_two_port/webhooks/smartlead" "${pg_search[@]}" | tee -a "$results"
    stop "$pg_two_pid"
    stop "$pg_one_pid"
fi

echo "== (4) reload of $rule_count generated rules under load"
# The capacity search overloads the router on purpose (thousands of connections held open):
# its peak is recorded, then the peak is reset to the current resident set, so that the reload
# row measures serving the rules and reloading them, not the overload before.
record_rss capacity "$router_pid"
echo 5 >"/proc/$router_pid/clear_refs"
"$loadgen" rules --count "$rule_count" --sink "http://$sink" >"$tmp/bulk.yaml.part"
mv "$tmp/bulk.yaml.part" "$tmp/rules/10-bulk.yaml"
"$loadgen" closed --label reload --url "$webhook" --sink "$sink" \
    --connections 10 --duration "$secs" --drain-timeout 30 "${body_args[@]}" \
    --reload-url "http://127.0.0.1:$router_port/-/reload" --reload-times 3 --reload-after 5 \
    --reload-edit "$tmp/rules/10-bulk.yaml" |
    tee -a "$results"
record_rss reload "$router_pid"

# (6) Instructions per event under callgrind: the server is run twice, with a small and a
# large fixed number of requests; the difference of the totals over the difference of the
# counts is the cost of one more event, start and stop cancelled out.
cg_small="${BENCH_CG_SMALL:-200}"
cg_large="${BENCH_CG_LARGE:-1200}"
# Totals the instructions (Ir) of a server run under callgrind for N requests. Arguments: label,
# N, port, the readiness path, the loadgen's extra arguments (one word, may be empty), then the
# server's command line.
callgrind_total() { # label n port ready extra cmd…
    local label="$1" n="$2" port="$3" ready="$4" extra="$5"
    shift 5
    local out="$tmp/callgrind-$label-$n.out"
    (cd "$tmp" && exec valgrind --tool=callgrind --callgrind-out-file="$out" "$@") \
        >"$tmp/callgrind-$label-$n.log" 2>&1 &
    local pid=$!
    pids+=("$pid")
    "$loadgen" wait --url "http://127.0.0.1:$port$ready" --timeout 180 >/dev/null
    # shellcheck disable=SC2086 # $extra is one optional argument pair or nothing
    "$loadgen" count --label "cg-$label" --url "http://127.0.0.1:$port/webhooks/smartlead" \
        --requests "$n" --connections "$connections" $extra "${body_args[@]}" >"$tmp/callgrind-$label-$n.json"
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    forget "$pid"
    awk '/^(summary|totals):/ {print $2; exit}' "$out"
}
if [ "${BENCH_CALLGRIND:-1}" != "0" ] && command -v valgrind >/dev/null 2>&1; then
    echo "== (6) instructions per event (callgrind, $cg_small and $cg_large requests)"
    read -r cg_port cg_sink_port < <("$loadgen" free-ports --count 2 | tr '\n' ' '; echo)
    mkdir -p "$tmp/cg-deliver-rules"
    sed "s/$sink_port/$cg_sink_port/" "$tmp/rules/00-sink.yaml" >"$tmp/cg-deliver-rules/00-sink.yaml"
    for what in reference intake deliver; do
        totals=()
        for n in "$cg_small" "$cg_large"; do
            rm -f "$tmp/cg-$what.db"*
            case "$what" in
            reference)
                totals+=("$(callgrind_total "$what" "$n" "$cg_port" /healthz "" \
                    "$bare_warp" "127.0.0.1:$cg_port" --sqlite "$tmp/cg-$what.db")") ;;
            intake)
                totals+=("$(callgrind_total "$what" "$n" "$cg_port" /readyz "" \
                    "$switchboard" serve --listen "127.0.0.1:$cg_port" --rules "$tmp/intake-rules" \
                    --templates "$root/templates" --store "sqlite://$tmp/cg-$what.db" \
                    --log-level "$log_level")") ;;
            deliver)
                totals+=("$(callgrind_total "$what" "$n" "$cg_port" /readyz \
                    "--sink=127.0.0.1:$cg_sink_port" \
                    "$switchboard" serve --listen "127.0.0.1:$cg_port" --rules "$tmp/cg-deliver-rules" \
                    --templates "$root/templates" --store "sqlite://$tmp/cg-$what.db" \
                    --log-level "$log_level" --concurrency 64 --per-destination 64)") ;;
            esac
        done
        if [ -n "${totals[0]}" ] && [ -n "${totals[1]}" ]; then
            per=$(( (totals[1] - totals[0]) / (cg_large - cg_small) ))
            echo "{\"kind\":\"instructions\",\"label\":\"$what\",\"per_event\":$per,\"small\":${totals[0]},\"large\":${totals[1]},\"requests\":[$cg_small,$cg_large]}" |
                tee -a "$results"
        else
            echo "callgrind ($what) gave no total: see $tmp/callgrind-$what-*.log"
        fi
    done
fi

echo
echo "== results ($connections connections, $secs s per run; the load generator shares the machine)"
status=0
"$loadgen" report --results "$results" --criterion "$tmp/criterion.txt" || status=$?
exit "$status"
