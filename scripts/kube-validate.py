#!/usr/bin/env python3
"""Validate `isola kube generate` output against the official Kubernetes
models (the `kubernetes` Python client, v31 = Kubernetes 1.31).

Each document is deserialized into its model (V1Deployment, V1Job,
V1Service) and serialized back: a field the model does not know, or a value
of the wrong type, makes the two differ; a required field missing makes the
model raise. Then the rules the API server would enforce that the models do
not: names are DNS-1123 labels (a Service's DNS-1035) and unique per kind,
selectors match the pod's labels, port names fit and are unique, container
and volume names are unique, every volumeMount names a volume, probe
periods are at least 1 s, init containers have no probes. Exit 1 with one line per problem.

Usage: kube-validate.py FILE.yaml (scripts/kube-deps.sh installs the client)
"""
import re
import sys

import yaml
from kubernetes.client import ApiClient

MODELS = {("apps/v1", "Deployment"): "V1Deployment",
          ("batch/v1", "Job"): "V1Job",
          ("v1", "Service"): "V1Service"}
LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
problems = []


def problem(doc, msg):
    name = (doc.get("metadata") or {}).get("name", "?")
    problems.append(f"{doc.get('kind')} {name}: {msg}")


def round_trip(api, doc, model):
    obj = api._ApiClient__deserialize(doc, model)
    back = api.sanitize_for_serialization(obj)
    if back != doc:
        problem(doc, f"not the {model} model: {diff(doc, back)}")


def diff(a, b, path=""):
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                return diff(a.get(k), b.get(k), f"{path}.{k}")
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            if x != y:
                return diff(x, y, f"{path}[{i}]")
    return f"{path or '.'}: {a!r} became {b!r}"


def check_pod(doc, spec, selector):
    labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
    for k, v in (selector or {}).items():
        if labels.get(k) != v:
            problem(doc, f"selector {k}={v} does not match the pod's labels")
    pod = (spec.get("template") or {}).get("spec") or {}
    containers = pod.get("containers", []) + pod.get("initContainers", [])
    for c in pod.get("initContainers", []):
        if any(k.endswith("Probe") for k in c):
            problem(doc, f"init container {c.get('name')} has a probe")
    names = [c.get("name") for c in containers]
    if len(set(names)) != len(names):
        problem(doc, f"container names repeat: {names}")
    volumes = [v["name"] for v in pod.get("volumes", [])]
    if len(set(volumes)) != len(volumes):
        problem(doc, f"volume names repeat: {volumes}")
    for c in containers:
        if not LABEL.match(c.get("name", "")):
            problem(doc, f"container name {c.get('name')!r}")
        for m in c.get("volumeMounts", []):
            if m["name"] not in volumes:
                problem(doc, f"volumeMount {m['name']} has no volume")
        port_names = [p.get("name", "") for p in c.get("ports", [])]
        if len(set(port_names)) != len(port_names):
            problem(doc, f"port names repeat: {port_names}")
        for n in port_names:
            if len(n) > 15 or not LABEL.match(n):
                problem(doc, f"port name {n!r}")
        for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
            pr = c.get(kind)
            if pr and pr.get("periodSeconds", 1) < 1:
                problem(doc, f"{kind}.periodSeconds < 1")
            if pr and kind != "readinessProbe" and pr.get("successThreshold", 1) != 1:
                problem(doc, f"{kind}.successThreshold must be 1")


def main(path):
    api = ApiClient()
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d is not None]
    if not docs:
        problems.append("no documents")
    seen = set()
    for doc in docs:
        key = (doc.get("kind"), (doc.get("metadata") or {}).get("name"))
        if key in seen:
            problem(doc, "a second object of this kind and name")
        seen.add(key)
        if doc.get("kind") == "Service" and not DNS1035.match(key[1] or ""):
            problem(doc, "a Service name is a DNS-1035 label (starts with a letter)")
        model = MODELS.get((doc.get("apiVersion"), doc.get("kind")))
        if model is None:
            problem(doc, "unexpected apiVersion/kind")
            continue
        try:
            round_trip(api, doc, model)
        except (ValueError, TypeError) as e:
            problem(doc, f"{model}: {e}")
        name = (doc.get("metadata") or {}).get("name", "")
        if not LABEL.match(name) or len(name) > 63:
            problem(doc, f"name {name!r} is no DNS-1123 label")
        spec = doc.get("spec") or {}
        if doc["kind"] == "Deployment":
            check_pod(doc, spec, (spec.get("selector") or {}).get("matchLabels"))
        elif doc["kind"] == "Job":
            check_pod(doc, spec, None)
    for p in problems:
        print(p)
    print(f"{len(docs)} documents, {len(problems)} problems", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
