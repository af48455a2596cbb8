#!/usr/bin/env bash
# Everything the test suite needs, on a fresh Debian machine, then the suite.
#
#   scripts/test.sh [cargo test args...]
#
# Installs the build tools (apt), a Python environment with the independent
# readers (deltalake, pyarrow, DuckDB) and the S3-compatible server (moto),
# starts that server on 127.0.0.1, runs `cargo test`, and stops the server.
# Respects CARGO_TARGET_DIR; KILN_VENV chooses where the Python environment
# lives (default: .venv in the repository).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

log() { printf '[test.sh] %s\n' "$*" >&2; }

# rustup installs cargo here; a non-login shell may not have it on PATH.
[ -d "$HOME/.cargo/bin" ] && export PATH="$HOME/.cargo/bin:$PATH"
command -v cargo >/dev/null || { log "cargo not found: install Rust 1.95 or newer (rustup)"; exit 1; }

# --- system packages -------------------------------------------------------
need_apt=()
command -v cc >/dev/null || need_apt+=(gcc)
command -v make >/dev/null || need_apt+=(make)
command -v curl >/dev/null || need_apt+=(curl)
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# --- Python readers and the S3 server ------------------------------------
venv=${KILN_VENV:-$repo/.venv}
stamp="$venv/.kiln-requirements"
if [ ! -x "$venv/bin/python" ] || ! cmp -s scripts/requirements-test.txt "$stamp"; then
  log "creating Python environment in $venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r scripts/requirements-test.txt
  cp scripts/requirements-test.txt "$stamp"
fi
export KILN_PYTHON="$venv/bin/python"

# --- S3-compatible server on loopback ------------------------------------
s3_port=${KILN_S3_PORT:-$("$KILN_PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}
s3_log=$(mktemp -t kiln-moto.XXXXXX.log)
"$KILN_PYTHON" -m moto.server -H 127.0.0.1 -p "$s3_port" >"$s3_log" 2>&1 &
s3_pid=$!
cleanup() {
  kill "$s3_pid" 2>/dev/null || true
  wait "$s3_pid" 2>/dev/null || true
  rm -f "$s3_log"
}
trap cleanup EXIT
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$s3_port/" >/dev/null 2>&1 && break
  kill -0 "$s3_pid" 2>/dev/null || { cat "$s3_log" >&2; log "the S3 server did not start"; exit 1; }
  sleep 0.2
done
curl -fsS "http://127.0.0.1:$s3_port/" >/dev/null || { cat "$s3_log" >&2; log "the S3 server is not answering"; exit 1; }
log "S3 server (moto) on 127.0.0.1:$s3_port"
export KILN_TEST_S3_ENDPOINT="http://127.0.0.1:$s3_port"

# --- the suite --------------------------------------------------------------
log "cargo test (target dir: ${CARGO_TARGET_DIR:-target})"
cargo test --locked "$@"
