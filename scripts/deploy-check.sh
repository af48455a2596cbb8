#!/usr/bin/env bash
# Checks deploy/: the Dockerfile's lint, every overlay rendered and
# validated (Kubernetes schemas for two versions, the CRDs against the
# schemas in deploy/schemas, rules of our own), the image built around a
# kiln binary and run as non-root on a read-only root filesystem, and the
# stream-worker Deployment played with podman against a real broker.
#
#   scripts/deploy-check.sh KILN_BINARY
#
# scripts/test.sh runs it after the test suite, with the binary the suite
# built, a broker in KILN_TEST_KAFKA_TANSU, podman installed and
# CONTAINERS_CONF set; KILN_PYTHON is the test environment's Python.
set -euo pipefail
cd "$(dirname "$0")/.."
binary=${1:?usage: deploy-check.sh KILN_BINARY}
py=${KILN_PYTHON:?KILN_PYTHON is not set: run through scripts/test.sh}
bin=$(dirname "$py")
brokers=${KILN_TEST_KAFKA_TANSU:?KILN_TEST_KAFKA_TANSU is not set: run through scripts/test.sh}
work=$(mktemp -d -t kiln-deploy.XXXXXX)
image=localhost/kiln:check
play_file="$work/play.yaml"
cleanup() {
  [ -f "$play_file" ] && podman kube down "$play_file" >/dev/null 2>&1 || true
  rm -rf "$work" deploy/k8s/.check deploy/.rootfs
}
trap cleanup EXIT
log() { printf '[deploy-check] %s\n' "$*" >&2; }
fail() { log "FAILED: $*"; exit 1; }

# --- the Dockerfile -----------------------------------------------------------
"$bin/hadolint" deploy/Dockerfile || fail "hadolint deploy/Dockerfile"
log "hadolint: deploy/Dockerfile is clean"

# --- manifests ------------------------------------------------------------------
# Every overlay, and the optional components on the base (rendered from a
# kustomization made here, since kustomize reads only below its root).
mkdir -p deploy/k8s/.check/components
cat > deploy/k8s/.check/components/kustomization.yaml <<'EOF'
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - ../../base
components:
  - ../../components/hpa
  - ../../components/service-monitor
EOF
kube_versions=(1.30.0 1.35.0)
for target in overlays/cpu overlays/gpu .check/components; do
  name=${target//\//-}
  rendered="$work/$name.yaml"
  "$bin/kubectl" kustomize "deploy/k8s/$target" > "$rendered" || fail "kubectl kustomize deploy/k8s/$target"
  mkdir -p "$work/$name"
  "$py" scripts/deploy_check.py split "$rendered" "$work/$name" >/dev/null
  for v in "${kube_versions[@]}"; do
    out=$("$bin/kubernetes-validate" --strict -k "$v" "$work/$name/core.yaml" 2>&1) \
      || { echo "$out"; fail "kubernetes-validate $target for $v"; }
    if grep -q "Couldn't find schema" <<<"$out"; then
      echo "$out"
      fail "$target has a kind with no schema for Kubernetes $v"
    fi
  done
  for pair in ScaledObject:keda-scaledobject-v1alpha1 ServiceMonitor:servicemonitor-v1; do
    kind=${pair%%:*}
    schema="deploy/schemas/${pair#*:}.json"
    "$py" - "$work/$name/$kind.json" "$work/$name/$kind" <<'EOF'
import json, sys
for i, d in enumerate(json.load(open(sys.argv[1]))):
    json.dump(d, open(f"{sys.argv[2]}-{i}.json", "w"))
EOF
    for doc in "$work/$name/$kind"-*.json; do
      [ -e "$doc" ] || continue
      "$bin/check-jsonschema" --schemafile "$schema" "$doc" >/dev/null || fail "$target: $kind $(basename "$doc") against $schema"
    done
  done
  "$py" scripts/deploy_check.py semantics "$rendered" || fail "$target breaks a rule a cluster would enforce"
  log "$target: $(grep -c '^kind:' "$rendered") objects valid for Kubernetes ${kube_versions[*]}"
done
# The validators catch what they are here for: an unknown field, a
# misspelled ScaledObject field.
sed 's/^  replicas: 1$/  replicas: 1\n  replica: 1/' "$work/overlays-cpu/core.yaml" > "$work/broken.yaml"
"$bin/kubernetes-validate" --strict -k 1.30.0 "$work/broken.yaml" >/dev/null 2>&1 \
  && fail "kubernetes-validate passed a Deployment with an unknown field"
"$py" -c 'import json,sys; d=json.load(open(sys.argv[1])); d["spec"]["maxReplicas"]=d["spec"].pop("maxReplicaCount"); json.dump(d, open(sys.argv[2],"w"))' \
  "$work/overlays-cpu/ScaledObject-0.json" "$work/broken-so.json"
"$bin/check-jsonschema" --schemafile deploy/schemas/keda-scaledobject-v1alpha1.json "$work/broken-so.json" >/dev/null 2>&1 \
  && fail "check-jsonschema passed a ScaledObject with a misspelled field"
log "the validators refuse an unknown Deployment field and a misspelled ScaledObject field"

# --- the image --------------------------------------------------------------------
deploy/stage-rootfs.sh "$binary" deploy/.rootfs
podman build --quiet -f deploy/Dockerfile --build-arg ROOTFS=prebuilt \
  --build-arg REVISION="$(git rev-parse HEAD 2>/dev/null || echo unknown)" --target runtime -t "$image" . >/dev/null \
  || fail "podman build"
podman save --format oci-archive -o "$work/image.tar" "$image" >/dev/null
config=$(skopeo inspect --config "oci-archive:$work/image.tar")
"$py" - "$config" <<'EOF' || fail "the image's configuration"
import json, sys
c = json.loads(sys.argv[1])
cfg = c["config"]
assert cfg["User"] == "65532:65532", cfg["User"]
assert cfg["Entrypoint"] == ["/usr/local/bin/kiln"], cfg["Entrypoint"]
labels = cfg.get("Labels", {})
for key in ("org.opencontainers.image.title", "org.opencontainers.image.version", "org.opencontainers.image.revision"):
    assert labels.get(key), f"no label {key}"
EOF
size=$(podman image inspect --format '{{.Size}}' "$image")
log "image $image built: $((size / 1024 / 1024)) MiB, user 65532, entrypoint kiln"
version=$(podman run --rm --read-only --network none "$image" --version) || fail "kiln --version in the image"
[ "$version" = "$("$binary" --version)" ] || fail "the image says '$version'"
# Non-root, read-only root filesystem, writes only to the /tmp volume.
podman run --rm --read-only --read-only-tmpfs=false --tmpfs /tmp:rw,mode=1777 --network none --user 65532:65532 \
  "$image" demo --events 20000 --dir /tmp/demo > "$work/demo.out" 2>&1 \
  || { cat "$work/demo.out"; fail "kiln demo in the image"; }
grep -q "look at one" "$work/demo.out" || { cat "$work/demo.out"; fail "kiln demo's report"; }
if podman run --rm --read-only --read-only-tmpfs=false --network none "$image" demo --events 1000 --dir /demo >/dev/null 2>&1; then
  fail "the root filesystem is writable"
fi
log "kiln --version and kiln demo ran in the image as 65532 on a read-only root filesystem"

# --- the stream worker, played as a pod -----------------------------------------------
topic="kiln-play-$(date +%s)-$$"
features="$work/features"
mkdir -p "$features" && chmod 0777 "$features"
metrics_port=$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p deploy/k8s/.check/play
cat > deploy/k8s/.check/play/kustomization.yaml <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - ../../overlays/cpu
images:
  - name: localhost/kiln
    newName: localhost/kiln
    newTag: check
patches:
  - target:
      kind: Deployment
      name: kiln-stream
    patch: |-
      - op: remove
        path: /spec/template/spec/containers/0/envFrom
      - op: replace
        path: /spec/template/spec/containers/0/env
        value:
          - {name: KILN_KAFKA_BROKERS, value: "$brokers"}
          - {name: CLICKS_TOPIC, value: "$topic"}
          - {name: FEATURES, value: /features}
          - {name: KILN_METRICS_ADDR, value: "127.0.0.1:$metrics_port"}
          - {name: KILN_LOG, value: info}
      - op: add
        path: /spec/template/spec/volumes/-
        value: {name: features, hostPath: {path: "$features", type: Directory}}
      - op: add
        path: /spec/template/spec/containers/0/volumeMounts/-
        value: {name: features, mountPath: /features}
EOF
"$bin/kubectl" kustomize deploy/k8s/.check/play > "$work/play-all.yaml" || fail "rendering the play overlay"
"$py" scripts/deploy_check.py play "$work/play-all.yaml" "$play_file"
# The topic first, so the worker's group has partitions to take.
"$binary" trigger clicks --topic "$topic" -b "$brokers" --id warmup >/dev/null || fail "creating the topic"
podman kube play --network host "$play_file" >/dev/null || fail "podman kube play"
container=$(podman ps --format '{{.Names}}' | grep -- '-kiln$' | head -1)
[ -n "$container" ] || fail "no kiln container is running"
podman logs -f "$container" > "$work/pod.log" 2>&1 &
logs_pid=$!
ready=""
for _ in $(seq 1 120); do
  if curl -fsS "http://127.0.0.1:$metrics_port/readyz" >/dev/null 2>&1; then ready=yes; break; fi
  sleep 0.5
done
[ -n "$ready" ] || { cat "$work/pod.log"; fail "/readyz did not answer 200 within 60 s"; }
log "the played stream worker is ready"
n=20
for i in $(seq 1 "$n"); do
  "$binary" trigger clicks --topic "$topic" -b "$brokers" --id "click-$i" >/dev/null || fail "producing click $i"
done
want=$((n + 1))
seen=""
for _ in $(seq 1 120); do
  curl -fsS "http://127.0.0.1:$metrics_port/metrics" > "$work/metrics.txt" 2>/dev/null || true
  if "$py" - "$work/metrics.txt" "$want" <<'EOF'
import sys
from prometheus_client.parser import text_string_to_metric_families
want = float(sys.argv[2])
read = [s.value for f in text_string_to_metric_families(open(sys.argv[1]).read())
        for s in f.samples if s.name == "kiln_records_read_total" and s.labels.get("pipeline") == "clicks_stream"]
sys.exit(0 if read == [want] else 1)
EOF
  then seen=yes; break; fi
  sleep 0.5
done
[ -n "$seen" ] || { cat "$work/metrics.txt" "$work/pod.log"; fail "/metrics never showed $want records read"; }
log "/metrics parses and shows the $want records read"
# SIGTERM through the pod, as the kubelet sends it; podman kills what is
# still running 30 s later. Then the pod's removal.
pod=$(podman inspect --format '{{.Pod}}' "$container")
started=$(date +%s%N)
podman pod stop --time 30 "$pod" >/dev/null || fail "stopping the pod"
took_ms=$(( ($(date +%s%N) - started) / 1000000 ))
wait "$logs_pid" || true
status=$(podman inspect --format '{{.State.ExitCode}}' "$container")
podman logs "$container" > "$work/pod.log" 2>&1 || true
podman kube down "$play_file" >/dev/null || fail "podman kube down"
[ "$status" = 0 ] || { cat "$work/pod.log"; fail "the worker exited $status after SIGTERM"; }
grep -Eq '"abandoned_at_shutdown": ?false' "$work/pod.log" || { cat "$work/pod.log"; fail "the worker did not report a clean stop"; }
[ "$took_ms" -lt 10000 ] || fail "the worker took ${took_ms} ms to stop after SIGTERM"
# os._exit: the interpreter's teardown after deltalake and pyarrow can
# abort ("terminate called without an active exception") once the answer
# is out.
rows=$("$py" -c 'import os, sys; from deltalake import DeltaTable; print(DeltaTable(sys.argv[1]).to_pyarrow_table().num_rows, flush=True); os._exit(0)' "$features/clicks_seen")
[ "$rows" = "$want" ] || fail "the feature set has $rows rows, not $want"
log "SIGTERM stopped the worker in ${took_ms} ms (exit 0); podman kube down removed it; its feature set holds all $want records"
log "all deploy checks passed"
