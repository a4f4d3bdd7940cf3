#!/usr/bin/env bash
# tests/run.sh: installs what the test suite needs and runs every test.
#
#   tests/run.sh           the full suite, as CI runs it
#   tests/run.sh --long    also the long-running modes (set CLACKS_LONG=1)
#
# Needs: a Rust toolchain, python3 (3.8 to 3.12, for lib2to3) with venv support, root, and
# apt for Debian packages (amqp-specs: the 0-10 spec the codec generator reads; strace for
# the durability tests; slapd for the LDAP tests; openssl for the test CA; iproute2 for the
# federation test that cuts a link; fuse3 for the power-loss test; prometheus for promtool;
# curl, chromium and chromium-driver for the web tests; systemd for systemd-analyze), and
# cargo-deb, installed with cargo. Everything else is fetched into target/.
set -euo pipefail
cd "$(dirname "$0")/.."

long_args=()
if [ "${1:-}" = "--long" ]; then
  # More crash cycles, and the tests marked ignored for their length.
  export CLACKS_LONG=1
  # The long tests print the figures they measure.
  long_args=(--include-ignored --show-output)
fi

log() { printf '\n== %s\n' "$*"; }

# One clean build: incremental state would only double what the build leaves on disk.
export CARGO_INCREMENTAL=0

need_pkgs=()
[ -f /usr/share/amqp/specs/0-10-qpid/amqp.0-10-qpid-errata.stripped.xml ] || need_pkgs+=(amqp-specs)
command -v strace >/dev/null 2>&1 || need_pkgs+=(strace)
# LDAP tests run a private slapd on 127.0.0.1; TLS tests make a test CA with openssl.
[ -x /usr/sbin/slapd ] && [ -x /usr/sbin/slapadd ] || need_pkgs+=(slapd)
command -v slappasswd >/dev/null 2>&1 || [ -x /usr/sbin/slappasswd ] || need_pkgs+=(slapd)
command -v openssl >/dev/null 2>&1 || need_pkgs+=(openssl)
# The federation tests put a broker in a network namespace of its own (needs root).
command -v ip >/dev/null 2>&1 || need_pkgs+=(iproute2)
python3 -c 'import venv, ensurepip' 2>/dev/null || need_pkgs+=(python3-venv)
# The metrics test checks /metrics with Prometheus' promtool.
command -v promtool >/dev/null 2>&1 || need_pkgs+=(prometheus)
# The power-loss test mounts a FUSE filesystem (needs root and /dev/fuse).
command -v fusermount3 >/dev/null 2>&1 || need_pkgs+=(fuse3)
# The gateway tests speak HTTP with curl; the status page is tested in headless Chromium.
command -v curl >/dev/null 2>&1 || need_pkgs+=(curl)
command -v chromium >/dev/null 2>&1 || need_pkgs+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need_pkgs+=(chromium-driver)
# The package test checks the service unit with systemd-analyze.
command -v systemd-analyze >/dev/null 2>&1 || need_pkgs+=(systemd)
# cargo-afl builds AFL++ from source for the fuzzing stage.
command -v make >/dev/null 2>&1 && command -v cc >/dev/null 2>&1 || need_pkgs+=(build-essential)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  log "installing ${need_pkgs[*]}"
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  # Install only: packages such as slapd and prometheus would otherwise start system
  # daemons listening beyond 127.0.0.1; the tests start what they use themselves.
  export RUNLEVEL=1
  $SUDO apt-get install -y -q "${need_pkgs[@]}" >/dev/null 2>&1 \
    || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q "${need_pkgs[@]}" >/dev/null; }
fi

if ! command -v cargo-deb >/dev/null 2>&1; then
  log "installing cargo-deb (the package test builds the .deb with it)"
  # Pinned: newer releases plan to refuse the test build's dev profile.
  cargo install cargo-deb --version 3.8.0 --locked --quiet
fi

log "Qpid's Python client and conformance suite"
mkdir -p target
bash tests/qpid-setup.sh >target/qpid-setup.log 2>&1 || { cat target/qpid-setup.log; exit 1; }
# pika, the 0-9-1 client of the AMQP 0-9-1 tests, in the same venv (they cross to qpid.messaging).
target/qpidpy/venv/bin/python -c 'import pika' 2>/dev/null \
  || target/qpidpy/venv/bin/pip install -q pika==1.3.2
# py-amqp's own integration tests (from its sdist) run against the broker too.
target/qpidpy/venv/bin/python -c 'import amqp, pytest, pytest_rerunfailures' 2>/dev/null \
  || target/qpidpy/venv/bin/pip install -q amqp==5.4.2 'pytest<9' pytest-rerunfailures
if [ ! -f target/py-amqp/t/integration/test_rmq.py ]; then
  rm -rf target/py-amqp target/py-amqp-dl && mkdir -p target/py-amqp-dl
  target/qpidpy/venv/bin/pip download -q --no-deps --no-binary :all: -d target/py-amqp-dl amqp==5.4.2
  tar -xzf target/py-amqp-dl/amqp-5.4.2.tar.gz -C target && mv target/amqp-5.4.2 target/py-amqp
fi

log "format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

log "tests"
# Two test threads: each end-to-end test runs a broker and Python clients, and CI has two
# cores.
cargo test --workspace --locked -- --test-threads=2 "${long_args[@]}"

log "fuzzing"
# Every fuzz target briefly from its committed corpus (tests/fuzz/run.sh: longer runs, and
# saving what they find); any crash fails the run.
if [ -n "${CLACKS_LONG:-}" ]; then
  tests/fuzz/run.sh 300
else
  tests/fuzz/run.sh 15
fi
