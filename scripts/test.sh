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
# Licenses, duplicate crate versions and sources (deny.toml). Advisories need the RustSec
# database, fetched from GitHub, which these machines cannot reach: checked only when a copy
# is already on disk (cargo-deny's default place), never fetched here.
deny_checks=(licenses bans sources)
if [ -d "${CARGO_HOME:-$HOME/.cargo}/advisory-dbs" ]; then
  deny_checks+=(advisories)
fi
# cargo-deny reads the metadata of every platform's dependencies (Windows-only crates too),
# which a Linux build never downloads: fetch them all first (crates.io, as cargo build does),
# or a fresh machine fails here with "--offline was specified".
cargo fetch --locked
./.tools/bin/cargo-deny --locked --offline check "${deny_checks[@]}"
# Integration tests start other packages' binaries (the coordinator's tests fork `agent`), and
# `cargo test` only builds the binaries of the package under test: build them all first.
# The lab's playbooks (production profile; --offline: no collection installs, no update check).
(cd ansible && ANSIBLE_LINT_SKIP_VERSION_CHECK=1 ../.tools/bin/ansible-lint --offline --profile production)
cargo build --workspace --bins --locked
cargo test --workspace --locked
