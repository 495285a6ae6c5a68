#!/usr/bin/env bash
# The README's test command (and exactly what .ci/run runs): install what is needed, check
# formatting and lints, then run every test against real nats-servers and real processes.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
./scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# Documentation is part of the contract (the child report format, the config schema): a broken
# intra-doc link or an unescaped tag fails the run like a lint.
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked
# Integration tests start other packages' binaries (the coordinator's tests fork `agent`), and
# `cargo test` only builds the binaries of the package under test: build them all first.
cargo build --workspace --bins --locked
cargo test --workspace --locked
