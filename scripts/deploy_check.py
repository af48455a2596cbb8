"""Checks of deploy/k8s that no schema makes: what an API server would
refuse or a cluster would do wrong.

    deploy_check.py split RENDERED OUTDIR   one file per kind group:
        OUTDIR/core.yaml (kinds Kubernetes has schemas for),
        OUTDIR/ScaledObject.json, OUTDIR/ServiceMonitor.json (one list each)
    deploy_check.py semantics RENDERED      the rules below; exit 1 on any
    deploy_check.py play RENDERED OUT       the stream worker's Deployment and
        its ConfigMap, for `podman kube play`
"""

import json
import re
import sys

import yaml

CRDS = {"ScaledObject", "ServiceMonitor"}
DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
CRON_FIELD = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]


def docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def split(rendered, outdir):
    core, crds = [], {}
    for d in docs(rendered):
        if d["kind"] in CRDS:
            crds.setdefault(d["kind"], []).append(d)
        else:
            core.append(d)
    with open(f"{outdir}/core.yaml", "w") as f:
        yaml.safe_dump_all(core, f)
    for kind in CRDS:
        with open(f"{outdir}/{kind}.json", "w") as f:
            json.dump(crds.get(kind, []), f)
    print(" ".join(f"{k}={len(v)}" for k, v in sorted(crds.items())))


def cron_ok(schedule):
    fields = schedule.split()
    if len(fields) != 5:
        return False
    for text, (lo, hi) in zip(fields, CRON_FIELD):
        for part in text.split(","):
            base, _, step = part.partition("/")
            if step and not step.isdigit():
                return False
            if base == "*":
                continue
            bounds = base.split("-")
            if not all(b.isdigit() and lo <= int(b) <= hi for b in bounds) or len(bounds) > 2:
                return False
    return True


def pod_specs(d):
    kind = d["kind"]
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return [(d["spec"]["template"], d["spec"].get("selector"))]
    if kind == "CronJob":
        return [(d["spec"]["jobTemplate"]["spec"]["template"], None)]
    return []


def semantics(rendered):
    problems = []
    all_docs = docs(rendered)
    names = {(d["kind"], d["metadata"]["name"]) for d in all_docs}
    config_maps = {d["metadata"]["name"] for d in all_docs if d["kind"] == "ConfigMap"}
    for d in all_docs:
        where = f'{d["kind"]}/{d["metadata"]["name"]}'
        if not DNS1123.match(d["metadata"]["name"]) or len(d["metadata"]["name"]) > 63:
            problems.append(f"{where}: not a valid object name")
        if d["kind"] == "CronJob":
            if not cron_ok(d["spec"]["schedule"]):
                problems.append(f"{where}: schedule {d['spec']['schedule']!r} is not a cron expression")
            if d["spec"].get("concurrencyPolicy") != "Forbid":
                problems.append(f"{where}: concurrencyPolicy must be Forbid")
            if not d["spec"].get("timeZone"):
                problems.append(f"{where}: no timeZone")
        for template, selector in pod_specs(d):
            labels = template["metadata"].get("labels", {})
            if selector is not None:
                wanted = selector.get("matchLabels", {})
                if any(labels.get(k) != v for k, v in wanted.items()):
                    problems.append(f"{where}: selector {wanted} does not match the template's labels {labels}")
            spec = template["spec"]
            if d["kind"] in ("CronJob", "Job") and spec.get("restartPolicy") not in ("Never", "OnFailure"):
                problems.append(f"{where}: a Job's pods need restartPolicy Never or OnFailure")
            pod_security = spec.get("securityContext", {})
            if pod_security.get("runAsNonRoot") is not True:
                problems.append(f"{where}: pod securityContext.runAsNonRoot is not true")
            volumes = {v["name"]: v for v in spec.get("volumes", [])}
            for v in volumes.values():
                if "configMap" in v and v["configMap"]["name"] not in config_maps:
                    problems.append(f"{where}: volume {v['name']} names ConfigMap {v['configMap']['name']}, which is not rendered")
            sa = spec.get("serviceAccountName")
            if sa and ("ServiceAccount", sa) not in names:
                problems.append(f"{where}: ServiceAccount {sa} is not rendered")
            for c in spec["containers"]:
                cwhere = f"{where} container {c['name']}"
                sc = c.get("securityContext", {})
                for key, value in [("runAsNonRoot", True), ("readOnlyRootFilesystem", True), ("allowPrivilegeEscalation", False)]:
                    if sc.get(key) is not value:
                        problems.append(f"{cwhere}: securityContext.{key} is not {value}")
                if "ALL" not in sc.get("capabilities", {}).get("drop", []):
                    problems.append(f"{cwhere}: capabilities do not drop ALL")
                if sc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
                    problems.append(f"{cwhere}: seccompProfile is not RuntimeDefault")
                if "memory" not in c.get("resources", {}).get("limits", {}):
                    problems.append(f"{cwhere}: no memory limit")
                mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
                if "emptyDir" not in volumes.get(mounts.get("/tmp"), {}):
                    problems.append(f"{cwhere}: /tmp is not an emptyDir (the root filesystem is read-only)")
                for m in c.get("volumeMounts", []):
                    if m["name"] not in volumes:
                        problems.append(f"{cwhere}: mounts {m['name']}, which is no volume")
                ports = {p.get("name") for p in c.get("ports", [])}
                for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                    port = c.get(probe, {}).get("httpGet", {}).get("port")
                    if isinstance(port, str) and port not in ports:
                        problems.append(f"{cwhere}: {probe} names port {port}, which the container does not have")
                if d["kind"] == "Deployment":
                    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                        if c.get(probe, {}).get("httpGet", {}).get("path") != path:
                            problems.append(f"{cwhere}: {probe} is not on {path}")
    for d in all_docs:
        if d["kind"] in ("ScaledObject", "HorizontalPodAutoscaler", "PodDisruptionBudget"):
            target = (d["spec"].get("scaleTargetRef") or {}).get("name")
            if target and ("Deployment", target) not in names:
                problems.append(f'{d["kind"]}/{d["metadata"]["name"]}: scales {target}, which is not rendered')
    for p in problems:
        print(p)
    print(f"{len(all_docs)} objects, {len(problems)} problems")
    return 1 if problems else 0


def play(rendered, out):
    picked = [
        d
        for d in docs(rendered)
        if d["kind"] == "ConfigMap" or (d["kind"] == "Deployment" and d["metadata"]["name"] == "kiln-stream")
    ]
    # The pod shares the host's network to reach the test broker on
    # 127.0.0.1, where podman takes no port mappings; podman would run the
    # probes with a curl the image does not have. The check asks the
    # endpoints itself.
    for d in picked:
        if d["kind"] == "Deployment":
            for c in d["spec"]["template"]["spec"]["containers"]:
                for key in ("ports", "startupProbe", "livenessProbe", "readinessProbe"):
                    c.pop(key, None)
    with open(out, "w") as f:
        yaml.safe_dump_all(picked, f)


if __name__ == "__main__":
    command = sys.argv[1]
    if command == "split":
        split(sys.argv[2], sys.argv[3])
    elif command == "semantics":
        sys.exit(semantics(sys.argv[2]))
    elif command == "play":
        play(sys.argv[2], sys.argv[3])
    else:
        sys.exit(f"unknown command {command}")
