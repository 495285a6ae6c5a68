#!/usr/bin/env bash
# End-to-end throughput: the whole fleet (producers → JetStream → parti workers → reports →
# tracker) against a raw async-nats baseline (publish with PubAck, pull with double ack, one
# in flight per partition each way, same stream settings and message size), both measured
# here in the same run. Not a test: results go to docs/PERFORMANCE.md by hand.
#
# Usage: scripts/bench-e2e.sh [seconds per run] [partitions] [all|tracing]
#   tracing: only the tracing-overhead section (the baseline and the ladder are skipped).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
seconds="${1:-20}"
partitions="${2:-16}"
sections="${3:-all}"
# --bins: the fleet runs target/release/simctl, which starts target/release/agent.
cargo build --release --workspace --bins --examples --locked >/dev/null
work="$(mktemp -d)"
trap 'kill "${nats_pid:-0}" "${sink_pid:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT

# The first match of sed script $2 in file $1, waiting up to 10 s for it to appear.
first_match() {
  local found=""
  for _ in $(seq 100); do
    found=$(sed -n "$2" "$1")
    [ -n "$found" ] && break
    sleep 0.1
  done
  echo "$found"
}

# The fleet config at an offered rate of $1 msg/s per partition, written to $2.
fleet_config() {
  sed -e "s/count: 16/count: $partitions/" \
      -e "s/partitions_per_producer: 8/partitions_per_producer: $(( (partitions + 1) / 2 ))/" \
      -e "s/message_rate_per_partition: 5.*/message_rate_per_partition: $1/" \
      -e "s/distribution: exponential/distribution: uniform/" \
      -e "s/min: 1ms/min: 0ms/" -e "s/max: 5ms/max: 0ms/" \
      -e "s/validation_window: 15s/validation_window: 60s/" configs/quick.yaml >"$2"
}

if [ "$sections" = all ]; then
# --- baseline ----------------------------------------------------------------------------
.tools/bin/nats-server -js -a 127.0.0.1 -p -1 --store_dir "$work/store" >"$work/nats.log" 2>&1 &
nats_pid=$!
port=$(first_match "$work/nats.log" 's/.*Listening for client connections on 127.0.0.1:\([0-9]*\).*/\1/p')
[ -n "$port" ] || { echo "nats-server did not start" >&2; exit 3; }
baseline=$(target/release/examples/raw_baseline "nats://127.0.0.1:$port" "$partitions" "$seconds" | sed -n 's/^baseline_msgs_per_sec=//p')
kill "$nats_pid"; wait "$nats_pid" 2>/dev/null || true
echo "baseline: $baseline msg/s ($partitions partitions, ${seconds}s)"

# --- fleet at increasing offered rates -----------------------------------------------------
best=0
for per_partition in 100 200 400 800 1600; do
  config="$work/fleet-$per_partition.yaml"
  fleet_config "$per_partition" "$config"
  if target/release/simctl run --config "$config" --duration "${seconds}s" --seed 1 \
       --json "$work/fleet-$per_partition.json" --run-dir "$work/run-$per_partition" >"$work/fleet-$per_partition.out" 2>&1; then
    verdict=PASS
  else
    verdict=FAIL
  fi
  if [ ! -s "$work/fleet-$per_partition.json" ]; then
    echo "fleet run at $per_partition msg/s per partition left no report:" >&2
    tail -20 "$work/fleet-$per_partition.out" >&2
    exit 3
  fi
  received=$(python3 -c "import json,sys; print(json.load(open('$work/fleet-$per_partition.json'))['tracker']['received'])")
  rate=$(( received / seconds ))
  echo "fleet: offered $(( per_partition * partitions )) msg/s → $rate msg/s processed, $verdict"
  if [ "$verdict" = PASS ] && [ "$rate" -gt "$best" ]; then best=$rate; fi
done
python3 -c "print(f'best fleet rate with zero loss: $best msg/s; ratio to baseline: {$best/$baseline:.2f}')"
fi

# --- tracing overhead ----------------------------------------------------------------------
# The fleet at the highest offered rate (saturated: what it processes is its capacity), with
# traces off, at ratio 0.01 and at 1.0, exporting to an OTLP sink that answers and counts.
# Saturated throughput moves by tens of percent from run to run on a shared host, so the three
# alternate, three times, and each is reported as the mean of its three runs.
target/release/examples/otlp_sink "$work/spans" >"$work/sink.out" 2>&1 &
sink_pid=$!
endpoint=$(first_match "$work/sink.out" 's/^endpoint=//p')
[ -n "$endpoint" ] || { echo "otlp_sink did not start" >&2; exit 3; }
fleet_config 1600 "$work/saturated.yaml"
declare -A total spans_total
rounds=3
for round in $(seq "$rounds"); do
  for ratio in off 0.01 1.0; do
    config="$work/traced-$ratio.yaml"
    cp "$work/saturated.yaml" "$config"
    if [ "$ratio" != off ]; then
      printf 'telemetry:\n  traces:\n    enabled: true\n    endpoint: %s\n    sample_ratio: %s\n' "$endpoint" "$ratio" >>"$config"
    fi
    before=$(cat "$work/spans" 2>/dev/null || echo 0)
    out="$work/traced-$ratio-$round"
    target/release/simctl run --config "$config" --duration "${seconds}s" --seed 1 \
      --json "$out.json" --run-dir "$out.run" >"$out.out" 2>&1 || true
    [ -s "$out.json" ] || { echo "traced run ($ratio) left no report" >&2; tail -20 "$out.out" >&2; exit 3; }
    sleep 1  # the last batches reach the sink
    spans=$(( $(cat "$work/spans") - before ))
    received=$(python3 -c "import json; print(json.load(open('$out.json'))['tracker']['received'])")
    rate=$(( received / seconds ))
    echo "traces $ratio, round $round: $rate msg/s processed, $spans spans exported"
    total[$ratio]=$(( ${total[$ratio]:-0} + rate ))
    spans_total[$ratio]=$(( ${spans_total[$ratio]:-0} + spans ))
  done
done
for ratio in off 0.01 1.0; do
  python3 -c "
off = ${total[off]} / $rounds; mean = ${total[$ratio]} / $rounds
print(f'traces $ratio: {mean:.0f} msg/s processed (mean of $rounds), {${spans_total[$ratio]} // $rounds} spans per run, overhead {(1 - mean / off) * 100:.1f} %')"
done
