"""Checks what the schemas cannot in rendered Kubernetes objects: that the objects refer to each
other correctly. Every selector meant for the service's pods selects them; selectors of other
pods (DNS, the ingress controller) carry none of the service's labels; the HPA, the Ingress
backends and the ConfigMap references name objects and ports that exist.

Usage: python deploy-references.py RENDERED.yaml  (prints problems, exits 1 if any)
"""

import sys

import yaml


def main(path):
    with open(path) as f:
        objects = [o for o in yaml.safe_load_all(f) if o]
    by_kind = {}
    for o in objects:
        by_kind.setdefault(o["kind"], []).append(o)
    problems = []

    deployments = by_kind.get("Deployment", [])
    if not deployments:
        problems.append("no Deployment rendered")
    pod_labels = {}
    container_ports = set()
    for d in deployments:
        name = d["metadata"]["name"]
        labels = d["spec"]["template"]["metadata"].get("labels", {})
        pod_labels[name] = labels
        if not subset(d["spec"]["selector"]["matchLabels"], labels):
            problems.append(f"Deployment {name}: its selector does not select its own pods")
        spec = d["spec"]["template"]["spec"]
        for c in spec.get("topologySpreadConstraints", []):
            if not subset(c["labelSelector"]["matchLabels"], labels):
                problems.append(f"Deployment {name}: a topology spread selects other pods")
        config_maps = {c["metadata"]["name"] for c in by_kind.get("ConfigMap", [])}
        for c in spec.get("initContainers", []) + spec["containers"]:
            for p in c.get("ports", []):
                container_ports.add(p.get("name"))
            for source in c.get("envFrom", []):
                ref = source.get("configMapRef")
                if ref and ref["name"] not in config_maps:
                    problems.append(
                        f"Deployment {name}: container {c['name']} reads ConfigMap {ref['name']}, which is not rendered"
                    )
    all_pod_labels = list(pod_labels.values())

    def selects_ours(selector):
        return any(subset(selector, labels) for labels in all_pod_labels)

    for s in by_kind.get("Service", []):
        if not selects_ours(s["spec"]["selector"]):
            problems.append(f"Service {s['metadata']['name']}: selects no pod of the Deployment")
        for p in s["spec"]["ports"]:
            target = p.get("targetPort")
            if isinstance(target, str) and target not in container_ports:
                problems.append(f"Service {s['metadata']['name']}: targetPort {target} is no container port")
    for p in by_kind.get("PodDisruptionBudget", []):
        if not selects_ours(p["spec"]["selector"]["matchLabels"]):
            problems.append(f"PodDisruptionBudget {p['metadata']['name']}: selects no pod of the Deployment")
    for h in by_kind.get("HorizontalPodAutoscaler", []):
        target = h["spec"]["scaleTargetRef"]
        if target["name"] not in pod_labels:
            problems.append(f"HorizontalPodAutoscaler {h['metadata']['name']}: scales {target['name']}, which is not rendered")
    ours = {k: v for labels in all_pod_labels for k, v in labels.items()}
    for n in by_kind.get("NetworkPolicy", []):
        name = n["metadata"]["name"]
        if not selects_ours(n["spec"]["podSelector"].get("matchLabels", {})):
            problems.append(f"NetworkPolicy {name}: applies to no pod of the Deployment")
        peers = [p for rule in n["spec"].get("ingress", []) for p in rule.get("from", [])]
        peers += [p for rule in n["spec"].get("egress", []) for p in rule.get("to", [])]
        for peer in peers:
            if "namespaceSelector" not in peer or "podSelector" not in peer:
                continue
            foreign = peer["podSelector"].get("matchLabels", {})
            leaked = {k: v for k, v in foreign.items() if ours.get(k) == v}
            if leaked:
                problems.append(
                    f"NetworkPolicy {name}: the selector of pods in another namespace requires this service's labels {leaked}"
                )
    services = {s["metadata"]["name"]: s for s in by_kind.get("Service", [])}
    for i in by_kind.get("Ingress", []):
        for rule in i["spec"]["rules"]:
            for route in rule["http"]["paths"]:
                backend = route["backend"]["service"]
                service = services.get(backend["name"])
                if service is None:
                    problems.append(f"Ingress {i['metadata']['name']}: backend {backend['name']} is not rendered")
                elif "name" in backend["port"] and backend["port"]["name"] not in {
                    p.get("name") for p in service["spec"]["ports"]
                }:
                    problems.append(f"Ingress {i['metadata']['name']}: Service port {backend['port']['name']} does not exist")

    for p in problems:
        print(f"{path}: {p}")
    return 1 if problems else 0


def subset(small, big):
    return bool(small) and all(big.get(k) == v for k, v in small.items())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
