#!/usr/bin/env bash
# The README's run command: install what is needed, build, and run the main job — a two-minute
# chaos simulation (configs/demo.yaml) on one machine: a managed nats-server, a coordinator and
# a local agent forking producer and worker processes, real process faults injected and each
# recovery measured. Exit code: 0 PASS, 1 FAIL, 2 bad input, 3 infrastructure error. Extra
# arguments go to `simctl run` (e.g. --duration 5m). The fault-free profile (CI smoke use):
# target/release/simctl run --config configs/quick.yaml.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
./scripts/setup.sh
cargo build --release --workspace --locked
exec target/release/simctl run --config configs/demo.yaml "$@"
