#!/usr/bin/env bash
# make chart-check: the install path, checked offline (no cluster needed).
#  1. the CRD: crds/ and the chart's copy equal what `stagecoach crd` prints;
#  2. helm lint --strict, with the default values and with every optional feature on;
#  3. helm template for three value sets (default; ci/all-features-values.yaml;
#     ci/cluster-ha-values.yaml) and the render failures the chart promises;
#  4. every rendered Kubernetes object validated by kubernetes-validate --strict against
#     the Kubernetes 1.33 OpenAPI schemas; the one custom kind, ServiceMonitor, has no
#     schema there and is checked against the Service it scrapes instead;
#  5. the Deployment: restricted pod security, probes, downward API, leader election,
#     and its args and env accepted by the real `stagecoach operator` argument parser;
#  6. RBAC: every rule the chart grants, listed, and compared with the allowed list;
#  7. examples/*.yaml and docs/fixtures/*.yaml against the CRD's openAPIV3Schema
#     (jsonschema, unknown fields refused) and its CEL rules (cel-python);
#  8. images/*.Dockerfile and the examples' own Dockerfiles planned by our planner.
#  9. the objects the operator renders for every example ImageBuild (claim, source,
#     stage and assemble pods) validated by kubernetes-validate --strict;
# 10. Pod Security: checkov's checks of the baseline standard on stage pods, of the
#     restricted one on every other pod and on the chart's workloads.
# Needs scripts/install-deps.sh (.work/tools/bin/helm, .work/tools/venv).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
tools=$root/.work/tools
helm=$tools/bin/helm
py=$tools/venv/bin/python
kubernetes_validate=$tools/venv/bin/kubernetes-validate
checkov=$tools/checkov/bin/checkov
# kubernetes-validate ships schemas per minor version; 1.33 is what k8s-openapi targets
# (feature v1_33 in Cargo.toml) and the version this chart is tested for.
k8s_version=1.33.0
chart=charts/stagecoach
release=stagecoach
namespace=stagecoach-system
work=$root/.work/check-chart
CARGO=${CARGO:-cargo}

for tool in "$helm" "$py" "$kubernetes_validate" "$checkov"; do
  if [[ ! -x $tool ]]; then
    echo "check-chart: $tool is missing: run scripts/install-deps.sh" >&2
    exit 1
  fi
done
rm -rf "$work"
mkdir -p "$work"

echo "== 1. CRD: crds/ and $chart/crds/ equal \`stagecoach crd\`"
"$CARGO" run -q --locked -p stagecoach-operator -- crd >"$work/crd.yaml"
for copy in crds/imagebuilds.stagecoach.dev.yaml "$chart/crds/imagebuilds.stagecoach.dev.yaml"; do
  if ! diff -u "$copy" "$work/crd.yaml" >"$work/crd.diff"; then
    head -40 "$work/crd.diff" >&2
    echo "check-chart: $copy differs from \`stagecoach crd\`: run" >&2
    echo "  cargo run -q -p stagecoach-operator -- crd | tee crds/imagebuilds.stagecoach.dev.yaml > $chart/crds/imagebuilds.stagecoach.dev.yaml" >&2
    exit 1
  fi
  echo "   $copy: identical ($(wc -l <"$copy") lines)"
done

echo "== 2. helm lint --strict ($("$helm" version --short))"
scenarios=(default all-features cluster-ha)
values_of() { # scenario -> helm arguments
  case $1 in
    default) ;;
    all-features) echo "-f $chart/ci/all-features-values.yaml" ;;
    cluster-ha) echo "-f $chart/ci/cluster-ha-values.yaml" ;;
  esac
}
for scenario in "${scenarios[@]}"; do
  read -ra args <<<"$(values_of "$scenario")"
  if ! "$helm" lint --strict "$chart" --namespace "$namespace" "${args[@]}" >"$work/lint-$scenario.txt" 2>&1; then
    cat "$work/lint-$scenario.txt" >&2
    echo "check-chart: helm lint failed for $scenario values" >&2
    exit 1
  fi
  echo "   $scenario: passed ($(grep -o '^\[[A-Z]*\] .*' "$work/lint-$scenario.txt" | paste -sd ';' - || true))"
done

echo "== 3. helm template"
for scenario in "${scenarios[@]}"; do
  read -ra args <<<"$(values_of "$scenario")"
  "$helm" template "$release" "$chart" --namespace "$namespace" --include-crds \
    "${args[@]}" >"$work/$scenario.yaml"
  # NOTES.txt, as `helm install` prints it (a client-side dry run needs no cluster).
  "$helm" install "$release" "$chart" --namespace "$namespace" --dry-run=client \
    "${args[@]}" | sed -n '/^NOTES:/,$p' >"$work/$scenario.notes.txt"
  grep -q 'kind: ImageBuild' "$work/$scenario.notes.txt" || {
    echo "check-chart: the $scenario NOTES.txt shows no ImageBuild to apply" >&2
    exit 1
  }
  echo "   $scenario: $(grep -c '^kind:' "$work/$scenario.yaml") objects -> .work/check-chart/$scenario.yaml; NOTES.txt -> $scenario.notes.txt"
done
# Build pods' network: with namespaces known, a policy that keeps RUN steps off the
# cloud metadata service; with none, no policy, and NOTES.txt says so.
"$py" - "$work/all-features.yaml" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d.get("kind") == "NetworkPolicy"]
assert [d["metadata"]["namespace"] for d in docs] == ["builds"], docs
spec = docs[0]["spec"]
assert spec["podSelector"] == {"matchLabels": {"app.kubernetes.io/managed-by": "stagecoach"}}, spec
assert spec["ingress"] == [] and set(spec["policyTypes"]) == {"Ingress", "Egress"}, spec
denied = [e for rule in spec["egress"] for to in rule["to"] for e in to["ipBlock"].get("except", [])]
assert "169.254.169.254/32" in denied and "fd00:ec2::254/128" in denied, denied
print("   all-features: NetworkPolicy in builds denies", ", ".join(denied))
PY
grep -q 'WARNING: build pods run without a NetworkPolicy' "$work/default.notes.txt" || {
  echo "check-chart: the default NOTES.txt does not say build pods have no NetworkPolicy" >&2
  exit 1
}
# Values the chart must refuse, with the reason it gives.
refuse() { # message-fragment helm-args...
  local want=$1
  shift
  if "$helm" template "$release" "$chart" --namespace "$namespace" "$@" >"$work/refused.txt" 2>&1; then
    echo "check-chart: helm template $* rendered, but must fail" >&2
    exit 1
  fi
  if ! grep -qF -- "$want" "$work/refused.txt"; then
    cat "$work/refused.txt" >&2
    echo "check-chart: helm template $* failed without saying '$want'" >&2
    exit 1
  fi
  echo "   refused: $* ($want)"
}
refuse "maxItems" --set 'watchNamespaces={a,b}'
refuse "value must be one of" --set logFormat=xml
refuse "additional properties 'replicas' not allowed" --set replicas=2
refuse "buildDefaults.limitRange.enabled needs" --set buildDefaults.limitRange.enabled=true
refuse "metrics.serviceMonitor.enabled needs metrics.service.enabled" \
  --set metrics.serviceMonitor.enabled=true --set metrics.service.enabled=false
refuse "serviceAccount.name is required" --set serviceAccount.create=false
refuse "cache.prune.enabled needs cache.repository" --set cache.prune.enabled=true
refuse "olderThan" --set cache.repository=r.example/c --set cache.prune.enabled=true \
  --set cache.prune.olderThan=2weeks

echo "== 4. kubernetes-validate $("$kubernetes_validate" --version) --strict, Kubernetes $k8s_version schemas"
schemas=$("$py" -c 'import kubernetes_validate, os; print(os.path.join(os.path.dirname(kubernetes_validate.__file__), "kubernetes-json-schema"))')
if [[ ! -d $schemas/v$k8s_version-local-strict ]]; then
  echo "check-chart: kubernetes-validate has no $k8s_version schemas: $(ls "$schemas")" >&2
  exit 1
fi
for scenario in "${scenarios[@]}"; do
  # Built-in kinds go to kubernetes-validate; custom kinds are split off (a kind without
  # a schema only draws a warning there, so none may slip through).
  "$py" - "$work/$scenario.yaml" "$work/$scenario.builtin.yaml" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
custom = {("monitoring.coreos.com/v1", "ServiceMonitor")}
builtin = [d for d in docs if (d["apiVersion"], d["kind"]) not in custom]
for d in builtin:
    group = d["apiVersion"].split("/")[0] if "/" in d["apiVersion"] else ""
    if "." in group and not group.endswith(".k8s.io") and group != "apiextensions.k8s.io":
        sys.exit(f"check-chart: {d['kind']} ({d['apiVersion']}) is a custom kind without a check")
yaml.safe_dump_all(builtin, open(sys.argv[2], "w"), sort_keys=False)
PY
  out=$("$kubernetes_validate" --strict --kubernetes-version "$k8s_version" "$work/$scenario.builtin.yaml" 2>&1) || {
    echo "$out" >&2
    echo "check-chart: kubernetes-validate rejected the $scenario render" >&2
    exit 1
  }
  if grep -v ' passed for resource ' <<<"$out" | grep -q .; then
    echo "$out" >&2
    echo "check-chart: kubernetes-validate warned on the $scenario render" >&2
    exit 1
  fi
  echo "   $scenario: $(grep -c ' passed for resource ' <<<"$out") passed: $(sed -n 's/.* passed for resource \([a-z]*\)\/.*/\1/p' <<<"$out" | sort | uniq -c | awk '{printf "%s %s, ", $1, $2}' | sed 's/, $//')"
done

echo "== 5. the Deployment, the Service and the ServiceMonitor"
"$CARGO" run -q --locked -p stagecoach-operator -- operator --help >"$work/operator-help.txt"
operator_bin=$("$CARGO" metadata --format-version 1 --no-deps --locked | jq -r .target_directory)/debug/stagecoach
for scenario in "${scenarios[@]}"; do
  "$py" - "$work/$scenario.yaml" "$scenario" "$namespace" "$work/operator-help.txt" "$work/$scenario.cmdline" <<'PY'
import re, sys, yaml
path, scenario, release_ns, help_path, cmdline_path = sys.argv[1:6]
docs = [d for d in yaml.safe_load_all(open(path)) if d]
by_kind = {}
for d in docs:
    by_kind.setdefault(d["kind"], []).append(d)
problems = []
check = lambda ok, msg: ok or problems.append(msg)

(deploy,) = by_kind["Deployment"]
spec = deploy["spec"]
pod = spec["template"]["spec"]
(c,) = pod["containers"]
args, env = c["args"], {e["name"]: e for e in c.get("env", [])}
flags = {a.split("=", 1)[0]: (a.split("=", 1)[1] if "=" in a else True) for a in args[1:]}

# Restricted pod security (Pod Security Standards "restricted").
psc, sc = pod.get("securityContext", {}), c.get("securityContext", {})
check(psc.get("runAsNonRoot") is True and sc.get("runAsNonRoot") is True, "runAsNonRoot")
check(sc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem")
check(sc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation: false")
check(sc.get("privileged") in (None, False), "not privileged")
check(sc.get("capabilities", {}).get("drop") == ["ALL"] and not sc["capabilities"].get("add"), "capabilities drop ALL, add none")
check((sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type") == "RuntimeDefault", "seccomp RuntimeDefault")
check(isinstance(psc.get("runAsUser"), int) and psc["runAsUser"] != 0, "a non-zero runAsUser")
check(not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC"), "no host namespaces")
check(all("hostPath" not in v for v in pod.get("volumes", [])), "no hostPath volumes")
check(pod.get("automountServiceAccountToken", True) is True, "the operator needs its token")
check(c.get("resources", {}).get("requests") and c["resources"].get("limits"), "resources: requests and limits")

# Probes and ports: /healthz and /readyz on the port --listen names.
port = int(flags["--listen"].rsplit(":", 1)[1])
ports = {p["name"]: p["containerPort"] for p in c["ports"]}
check(ports.get("http") == port, f"container port http == --listen port {port}")
for probe, path_ in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
    get = c.get(probe, {}).get("httpGet", {})
    check(get.get("path") == path_ and get.get("port") in ("http", port), f"{probe} on {path_}")

# Downward API: identity for the Lease and Events, namespace of the Lease.
for name, field in (("POD_NAME", "metadata.name"), ("POD_NAMESPACE", "metadata.namespace")):
    ref = env.get(name, {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
    check(ref == field, f"{name} from the downward API ({field})")
check(env.get("STAGECOACH_BUILDER_IMAGE", {}).get("value"), "STAGECOACH_BUILDER_IMAGE set")

# Arguments and environment the operator binary knows (from its --help), plus the two
# read by code rather than clap: POD_NAME (Event reporter, lease identity), RUST_LOG.
help_text = open(help_path).read()
known_flags = set(re.findall(r"(--[a-z][a-z-]+)", help_text)) - {"--help"}
known_env = set(re.findall(r"\[env: ([A-Z_]+)=", help_text)) | {"POD_NAME", "RUST_LOG"}
check(args[0] == "operator", "runs `stagecoach operator`")
for f in flags:
    check(f in known_flags, f"flag {f} unknown to `stagecoach operator`")
for e in env:
    check(e in known_env, f"env {e} unknown to `stagecoach operator`")

# Leader election with more than one replica; without it, never two operators at once.
replicas = spec.get("replicas", 1)
leader = "--leader-election" in flags
check(not (replicas > 1 and not leader), "replicas > 1 needs --leader-election")
check(spec["strategy"]["type"] == ("RollingUpdate" if leader else "Recreate"), "strategy Recreate without leader election")
watch = env.get("STAGECOACH_WATCH_NAMESPACE", {}).get("value")

# Selectors: the Deployment's own, the Service's, the ServiceMonitor's.
labels = spec["template"]["metadata"]["labels"]
check(all(labels.get(k) == v for k, v in spec["selector"]["matchLabels"].items()), "Deployment selector matches its pods")
services = by_kind.get("Service", [])
for svc in services:
    check(all(labels.get(k) == v for k, v in svc["spec"]["selector"].items()), "Service selects the operator pods")
    check([p.get("targetPort") for p in svc["spec"]["ports"]] == ["http"], "Service targets the http port")
for sm in by_kind.get("ServiceMonitor", []):
    check(sm["apiVersion"] == "monitoring.coreos.com/v1", "ServiceMonitor apiVersion")
    sel = sm["spec"]["selector"]["matchLabels"]
    matched = [s for s in services if all(s["metadata"]["labels"].get(k) == v for k, v in sel.items())
               and s["metadata"]["namespace"] in sm["spec"]["namespaceSelector"]["matchNames"]]
    check(len(matched) == 1, "ServiceMonitor selects exactly the metrics Service")
    for ep in sm["spec"]["endpoints"]:
        check(ep.get("path") == "/metrics", "ServiceMonitor scrapes /metrics")
        check(any(p["name"] == ep.get("port") for s in matched for p in s["spec"]["ports"]),
              "ServiceMonitor endpoint port is a named port of the Service")
        check(set(ep) <= {"port", "path", "interval", "scrapeTimeout"}, "ServiceMonitor endpoint fields")
for pdb in by_kind.get("PodDisruptionBudget", []):
    check(pdb["spec"]["selector"]["matchLabels"] == spec["selector"]["matchLabels"], "PDB selects the operator pods")
for lr in by_kind.get("LimitRange", []):
    check(watch is None or lr["metadata"]["namespace"] == watch, "LimitRange in the watched namespace")

if problems:
    sys.exit(f"check-chart: {scenario}: " + "; ".join(problems))
# The command line for the argument-parser check below.
with open(cmdline_path, "w") as f:
    for e in env.values():
        if "value" in e:
            f.write(f"env\t{e['name']}\t{e['value']}\n")
    f.write(f"env\tPOD_NAME\t{deploy['metadata']['name']}-0\nenv\tPOD_NAMESPACE\t{release_ns}\n")
    for a in args:
        f.write(f"arg\t{a}\n")
kinds = ", ".join(f"{len(v)} {k}" for k, v in sorted(by_kind.items()))
print(f"   {scenario}: replicas={replicas} leader-election={'on' if leader else 'off'} "
      f"strategy={spec['strategy']['type']} watch={watch or 'all namespaces'} "
      f"servicemonitor={'yes' if 'ServiceMonitor' in by_kind else 'no'}: security, probes, env, selectors ok")
PY
  # The real argument parser takes the chart's args and env: clap exits 2 on an unknown
  # or invalid argument; with no cluster to reach, a parsed command line ends in exit 1.
  run_env=(env -i "PATH=$PATH" "HOME=${HOME:-/root}" KUBECONFIG=/nonexistent/kubeconfig)
  run_args=()
  while IFS=$'\t' read -r kind name value; do
    case $kind in
      env) run_env+=("$name=$value") ;;
      arg) run_args+=("$name") ;;
    esac
  done <"$work/$scenario.cmdline"
  rc=0
  "${run_env[@]}" timeout 60 "$operator_bin" "${run_args[@]}" >"$work/$scenario.run.txt" 2>&1 || rc=$?
  if [[ $rc != 1 ]] || ! grep -q 'infer config' "$work/$scenario.run.txt"; then
    cat "$work/$scenario.run.txt" >&2
    echo "check-chart: stagecoach ${run_args[*]} (the $scenario Deployment's command) exited $rc, not at the cluster connection" >&2
    exit 1
  fi
  echo "   $scenario: \`stagecoach ${run_args[*]}\` parses (stops at: no cluster to connect to)"
done

echo "== 6. RBAC: every rule the chart grants"
for scenario in "${scenarios[@]}"; do
  "$py" - "$work/$scenario.yaml" "$scenario" "$namespace" <<'PY'
import sys, yaml
path, scenario, release_ns = sys.argv[1:4]
docs = [d for d in yaml.safe_load_all(open(path)) if d]

# What the operator needs, and why (operator/src/controller.rs, leader.rs):
OPERATOR = {
    ("stagecoach.dev", "imagebuilds"): {"list", "watch"},              # Controller watch
    ("stagecoach.dev", "imagebuilds/status"): {"patch"},               # server-side apply of status
    ("stagecoach.dev", "imagebuilds/finalizers"): {"update"},          # blockOwnerDeletion owner refs
    ("", "pods"): {"list", "watch", "create", "delete"},               # build pods
    ("", "pods/log"): {"get"},                                         # failure log excerpts
    ("", "persistentvolumeclaims"): {"get", "list", "watch", "create", "delete"},  # workspaces
    ("events.k8s.io", "events"): {"create", "patch", "list"},          # Recorder (patch: series); FailedMount of build pods
}
LEASES = {("coordination.k8s.io", "leases"): {"get", "create", "update"}}  # leader election
# ClusterRoles aggregated into the built-in admin/edit/view roles (for people, not the operator).
AGGREGATED = {
    ("stagecoach.dev", "imagebuilds"): {"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"},
    ("stagecoach.dev", "imagebuilds/status"): {"get", "list", "watch"},
}
AGGREGATE_LABELS = {f"rbac.authorization.k8s.io/aggregate-to-{r}" for r in ("admin", "edit", "view")}

(deploy,) = [d for d in docs if d["kind"] == "Deployment"]
sa = deploy["spec"]["template"]["spec"]["serviceAccountName"]
env = {e["name"]: e.get("value") for e in deploy["spec"]["template"]["spec"]["containers"][0].get("env", [])}
watch = env.get("STAGECOACH_WATCH_NAMESPACE")
leader = "--leader-election" in deploy["spec"]["template"]["spec"]["containers"][0]["args"]
roles = {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d
         for d in docs if d["kind"] in ("Role", "ClusterRole")}
problems = []

def grants(role):
    for rule in role.get("rules", []):
        if rule.get("nonResourceURLs"):
            problems.append(f"{role['metadata']['name']}: nonResourceURLs {rule['nonResourceURLs']}")
        for g in rule.get("apiGroups", []):
            for r in rule.get("resources", []):
                for v in rule.get("verbs", []):
                    if "*" in (g, r, v):
                        problems.append(f"{role['metadata']['name']}: wildcard in {g}/{r}/{v}")
                    if r == "secrets" or r.startswith("secrets/"):
                        problems.append(f"{role['metadata']['name']}: a rule on Secrets ({v})")
                    yield (g, r, v), tuple(rule.get("resourceNames", []))

operator_grants = {}  # scope -> {(group, resource): verbs}
bound = set()
for b in (d for d in docs if d["kind"] in ("RoleBinding", "ClusterRoleBinding")):
    subjects = b.get("subjects", [])
    if subjects != [{"kind": "ServiceAccount", "name": sa, "namespace": release_ns}]:
        problems.append(f"{b['kind']} {b['metadata']['name']} binds {subjects}, not only the operator")
    ref = b["roleRef"]
    ns = b["metadata"].get("namespace") if ref["kind"] == "Role" else None
    role = roles.get((ref["kind"], ns, ref["name"]))
    if role is None:
        problems.append(f"{b['kind']} {b['metadata']['name']} refers to {ref['kind']} {ref['name']}, not in the chart")
        continue
    bound.add((ref["kind"], ns, ref["name"]))
    scope = "cluster" if b["kind"] == "ClusterRoleBinding" else f"namespace {b['metadata']['namespace']}"
    for (g, r, v), names in grants(role):
        operator_grants.setdefault(scope, {}).setdefault((g, r), set()).add(v)
        if names:
            problems.append(f"{role['metadata']['name']}: resourceNames on {g}/{r}")

# Every granted rule must be allowed, in the right scope; everything needed must be there.
want = {}
op_scope = f"namespace {watch}" if watch else "cluster"
want[op_scope] = {k: set(v) for k, v in OPERATOR.items()}
if leader:
    want.setdefault(f"namespace {release_ns}", {}).update({k: set(v) for k, v in LEASES.items()})
rows = []
for scope in sorted(set(want) | set(operator_grants)):
    got, need = operator_grants.get(scope, {}), want.get(scope, {})
    for key in sorted(set(got) | set(need)):
        extra, missing = got.get(key, set()) - need.get(key, set()), need.get(key, set()) - got.get(key, set())
        if extra:
            problems.append(f"operator granted {sorted(extra)} on {key[0] or 'core'}/{key[1]} ({scope}): not in the allowed list")
        if missing:
            problems.append(f"operator lacks {sorted(missing)} on {key[0] or 'core'}/{key[1]} ({scope})")
        if key in got:
            rows.append((f"operator, {scope}", key[0] or "core", key[1], ",".join(sorted(got[key]))))

for key, role in roles.items():
    if key in bound:
        continue
    labels = set((role["metadata"].get("labels") or {}).keys())
    if key[0] != "ClusterRole" or not labels & AGGREGATE_LABELS:
        problems.append(f"{key[0]} {key[2]} is neither bound to the operator nor aggregated")
        continue
    for (g, r, v), _ in grants(role):
        if v not in AGGREGATED.get((g, r), set()):
            problems.append(f"aggregated {key[2]} grants {v} on {g}/{r}: not allowed")
        rows.append((f"people via {','.join(sorted(l.rsplit('-', 1)[1] for l in labels & AGGREGATE_LABELS))}", g or "core", r, v))

merged = {}
for who, g, r, v in rows:
    merged.setdefault((who, g, r), []).extend(v.split(","))
print(f"   {scenario}:")
for (who, g, r), verbs in merged.items():
    print(f"     {who:40} {g:20} {r:24} {','.join(sorted(set(verbs)))}")
if problems:
    sys.exit(f"check-chart: RBAC of the {scenario} render:\n  " + "\n  ".join(problems))
PY
done
echo "   every rule is in the allowed list, nothing on Secrets, no wildcards, nothing missing"

echo "== 7. examples, the ImageBuilds in README.md and NOTES.txt, and the status fixtures against the CRD (openAPIV3Schema + CEL rules)"
# The ImageBuilds shown inline (heredocs `<<'YAML' ... YAML`), taken out as files.
"$py" - "$work" README.md "$work"/*.notes.txt <<'PY'
import os, sys, textwrap
work = sys.argv[1]
for path in sys.argv[2:]:
    lines, n, block = open(path).read().splitlines(), 0, None
    for line in lines:
        if block is None and line.rstrip().endswith("<<'YAML'"):
            block = []
        elif block is not None and line.strip() == "YAML":
            n += 1
            name = os.path.basename(path).replace(".", "-")
            with open(os.path.join(work, f"inline-{name}-{n}.yaml"), "w") as f:
                f.write(textwrap.dedent("\n".join(block)) + "\n")
            block = None
        elif block is not None:
            block.append(line)
    if n == 0:
        sys.exit(f"check-chart: no inline ImageBuild found in {path}")
PY
"$py" - "$work/crd.yaml" examples/*.yaml docs/fixtures/*.yaml "$work"/inline-*.yaml <<'PY'
import os, re, sys, yaml
import celpy, celpy.celtypes as ct
from jsonschema import Draft7Validator

crd = yaml.safe_load(open(sys.argv[1]))
(version,) = [v for v in crd["spec"]["versions"] if v["storage"]]
api_version = f"{crd['spec']['group']}/{version['name']}"
kind = crd["spec"]["names"]["kind"]

def to_json_schema(s):
    """A structural schema as the API server applies it, in JSON Schema: nullable as a
    null type, int-or-string, and unknown fields refused (the server would prune them,
    which in an example is a typo) unless x-kubernetes-preserve-unknown-fields."""
    s = dict(s)
    s.pop("description", None)
    rules = s.pop("x-kubernetes-validations", None)
    if s.pop("x-kubernetes-int-or-string", False):
        s["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if s.pop("nullable", False) and "type" in s:
        s["type"] = [s["type"], "null"]
    if "properties" in s:
        s["properties"] = {k: to_json_schema(v) for k, v in s["properties"].items()}
        if "additionalProperties" not in s and not s.get("x-kubernetes-preserve-unknown-fields"):
            s["additionalProperties"] = False
    if isinstance(s.get("additionalProperties"), dict):
        s["additionalProperties"] = to_json_schema(s["additionalProperties"])
    if "items" in s:
        s["items"] = to_json_schema(s["items"])
    return s

root = version["schema"]["openAPIV3Schema"]
schema = to_json_schema(root)
# The API server accepts these at the root of every object; the CRD leaves them out.
schema["properties"].update(apiVersion={"type": "string"}, kind={"type": "string"}, metadata={"type": "object"})
validator = Draft7Validator(schema)

# CEL rules: evaluated where the schema has them, with `self` the value there.
env = celpy.Environment()
def split(s, sep):  # Kubernetes' CEL string library
    return ct.ListType([ct.StringType(x) for x in str(s).split(str(sep))])
def rules_at(s, value, path, out):
    if value is None:
        return
    for r in s.get("x-kubernetes-validations", []):
        out.append((path, r, value))
    for k, sub in (s.get("properties") or {}).items():
        if isinstance(value, dict) and k in value:
            rules_at(sub, value[k], f"{path}.{k}", out)
    if "items" in s and isinstance(value, list):
        for i, v in enumerate(value):
            rules_at(s["items"], v, f"{path}[{i}]", out)
    if isinstance(s.get("additionalProperties"), dict) and isinstance(value, dict):
        for k, v in value.items():
            rules_at(s["additionalProperties"], v, f"{path}.{k}", out)

count_rules = 0
dns1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
problems = []
checked = []
for path in sys.argv[2:]:
    if path.endswith("health_test.yaml"):
        continue
    for i, doc in enumerate(d for d in yaml.safe_load_all(open(path)) if d):
        where = os.path.relpath(path) + (f"#{i}" if i else "")
        if (doc.get("apiVersion"), doc.get("kind")) != (api_version, kind):
            problems.append(f"{where}: not an {api_version} {kind}")
            continue
        name = doc.get("metadata", {}).get("name", "")
        if not dns1123.match(name) or len(name) > 253:
            problems.append(f"{where}: metadata.name {name!r} is not a DNS subdomain")
        for e in sorted(validator.iter_errors(doc), key=lambda e: list(e.path)):
            problems.append(f"{where}: {'.'.join(map(str, e.path)) or '(root)'}: {e.message}")
        found = []
        rules_at(root, doc, "", found)
        for at, rule, value in found:
            count_rules += 1
            try:
                ok = env.program(env.compile(rule["rule"]), functions={"split": split}).evaluate(
                    {"self": celpy.json_to_cel(value)})
            except Exception as e:  # an unknown function is a gap in this check, not a pass
                problems.append(f"{where}{at}: cannot evaluate CEL rule {rule['rule']!r}: {e}")
                continue
            if not bool(ok):
                problems.append(f"{where}{at}: {rule.get('message', rule['rule'])}")
        checked.append(f"{where} ({name})")
if problems:
    sys.exit("check-chart: invalid ImageBuilds:\n  " + "\n  ".join(problems))
for c in checked:
    print(f"   valid: {c}")
print(f"   {len(checked)} ImageBuilds valid; {count_rules} CEL rule evaluations passed")
# The check itself refuses what it must: a typo, a wrong type, a broken CEL rule.
bad = yaml.safe_load(open("examples/public.imagebuild.yaml"))
bad["spec"]["outptu"] = bad["spec"].pop("output")
assert any(True for _ in validator.iter_errors(bad)), "a misspelt field must be refused"
bad = yaml.safe_load(open("examples/public.imagebuild.yaml"))
bad["spec"]["retries"] = "3"
assert any(True for _ in validator.iter_errors(bad)), "a string for an integer must be refused"
found = []
bad = yaml.safe_load(open("examples/public.imagebuild.yaml"))
bad["spec"]["dockerfileInline"] = "FROM scratch"
bad["spec"]["source"]["contextDir"] = "../outside"
rules_at(root, bad, "", found)
failing = [r["rule"] for _, r, v in found
           if not bool(env.program(env.compile(r["rule"]), functions={"split": split}).evaluate({"self": celpy.json_to_cel(v)}))]
assert len(failing) == 2, f"both CEL rules must refuse the broken example, got {failing}"
print("   (and the check refuses a misspelt field, a wrongly typed one and both broken CEL rules)")
PY

echo "== 8. Dockerfiles planned by stagecoach-builder plan"
plan() { "$CARGO" run -q --locked -p stagecoach-builder -- plan "$@"; }
for image in operator builder; do
  file=images/$image.Dockerfile
  plan -f "$file" --format json >"$work/$image.plan.json"
  "$py" - "$file" "$work/$image.plan.json" <<'PY'
import json, sys
path, plan_path = sys.argv[1:3]
text, plan = open(path).read(), json.load(open(plan_path))
binary = "stagecoach" if "operator" in path else "stagecoach-builder"
final = [s for s in plan["stages"] if s["id"] == plan["target"]][0]
problems = []
check = lambda ok, msg: ok or problems.append(msg)
check(final["base"]["kind"] == "scratch", "the image must end FROM scratch")
check(len(plan["stages"]) >= 2, "multi-stage")
check("target-feature=+crt-static" in text and "--target \"$triple\"" in text
      and all(f"{arch}) triple={t}" in text for arch, t in [("amd64", "x86_64-unknown-linux-gnu"), ("arm64", "aarch64-unknown-linux-gnu")]),
      "a fully static build for the TARGETARCH of each platform, amd64 and arm64")
inst = {i["instruction"]: i for i in final["instructions"]}
copies = [i for i in final["instructions"] if i["instruction"] == "copy"]
check(any(i.get("from") for i in copies), "the final stage copies from a build stage")
check("/etc/ssl/certs/ca-certificates.crt" in text, "a CA bundle at /etc/ssl/certs/ca-certificates.crt")
check(inst.get("entrypoint", {}).get("command", {}).get("exec") == [f"/{binary}"], f"ENTRYPOINT [\"/{binary}\"]")
check(inst.get("user", {}).get("user") == "65532:65532", "USER 65532:65532")
if problems:
    sys.exit(f"check-chart: {path}: " + "; ".join(problems))
waves = " | ".join(", ".join(w) if isinstance(w, list) else str(w) for w in plan["waves"])
print(f"   {path}: {len(plan['stages'])} stages ({', '.join(s['id'] + ' from ' + (s['base'].get('reference') or s['base']['kind']) for s in plan['stages'])}); "
      f"final FROM scratch, static {binary} for amd64 and arm64, CA bundle, ENTRYPOINT, USER 65532")
PY
done
# The examples whose Dockerfile lives in this repository, planned as the ImageBuild asks
# (its contextDir, dockerfile, target and build args).
"$py" - examples/*.imagebuild.yaml >"$work/example-plans.tsv" <<'PY'
import os, sys, yaml
for path in sys.argv[1:]:
    for doc in yaml.safe_load_all(open(path)):
        spec = doc["spec"]
        if "stagecoach-dev/stagecoach" not in spec["source"].get("git", {}).get("url", ""):
            continue
        dockerfile = os.path.normpath(os.path.join(spec["source"].get("contextDir", "."), spec.get("dockerfile", "Dockerfile")))
        args = ["-f", dockerfile] + (["--target", spec["target"]] if spec.get("target") else [])
        for a in spec.get("buildArgs", []):
            args += ["--build-arg", f"{a['name']}={a.get('value', '')}"]
        print("\t".join([f"{path} ({doc['metadata']['name']})"] + args))
PY
while IFS= read -r line; do
  IFS=$'\t' read -r -a fields <<<"$line"
  what=${fields[0]}
  if ! plan "${fields[@]:1}" --format json >"$work/example.plan.json" 2>"$work/example.plan.err"; then
    cat "$work/example.plan.err" >&2
    echo "check-chart: $what: plan ${fields[*]:1} failed" >&2
    exit 1
  fi
  summary=$("$py" - "$work/example.plan.json" "${fields[@]:1}" <<'PY'
import json, sys
plan, args = json.load(open(sys.argv[1])), sys.argv[2:]
if "--target" in args and plan["target"] != args[args.index("--target") + 1]:
    sys.exit(f"check-chart: planned target {plan['target']}, asked for {args[args.index('--target') + 1]}")
print("target", plan["target"] + ",", len(plan["stages"]), "stages,",
      "waves", " | ".join(", ".join(w) for w in plan["waves"]))
PY
)
  echo "   $what: plan ${fields[*]:1}: $summary"
done <"$work/example-plans.tsv"

echo "== 9. the build pods the operator renders for every example, validated by kubernetes-validate --strict"
# A source pod's outcome as it leaves it: a plan of stage pods (the others wait for the
# first, which mounts a secret, an ssh agent and a cache; the last is one platform's pod
# of a build for several, on its platform's node) and the commit, so every kind of pod,
# volume, container and placement gets rendered.
cat >"$work/source-outcome.json" <<'JSON'
{"succeeded":true,"summary":{"commit":"3f9c2a1e0b7d4c5f8a6e9d2b1c0f3e4a5b6c7d8e","commitTime":1793610000,"target":"runtime","pods":[{"id":"build","stages":["deps","build"],"image":"docker.io/library/golang:1.23@sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","waitsFor":[],"secrets":["npmrc"],"ssh":["default"],"runCache":true},{"id":"runtime","stages":["runtime"],"image":"gcr.io/distroless/static@sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb","waitsFor":["build"],"runsOn":"linux/amd64"},{"id":"runtime@linux/arm64","stages":["runtime"],"image":"gcr.io/distroless/static@sha256:cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc","waitsFor":["build"],"platform":"linux/arm64","runsOn":"linux/arm64"}]}}
JSON
for example in examples/*.imagebuild.yaml; do
  # Some files hold more than one ImageBuild: render each.
  "$py" - "$example" "$work/render" <<'PY'
import os, sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d.get("kind") == "ImageBuild"]
os.makedirs(sys.argv[2], exist_ok=True)
base = os.path.basename(sys.argv[1])
for i, d in enumerate(docs):
    yaml.safe_dump(d, open(os.path.join(sys.argv[2], f"{base}.{i}.yaml"), "w"))
PY
done
rendered=0
for build in "$work"/render/*.yaml; do
  "$CARGO" run -q --locked -p stagecoach-operator -- render "$build" \
    --source-outcome "$work/source-outcome.json" --builder-image registry.example.com/stagecoach/builder:0.1.0 \
    >"$build.objects"
  out=$("$kubernetes_validate" --strict --kubernetes-version "$k8s_version" "$build.objects" 2>&1) || {
    echo "$out" >&2
    echo "check-chart: kubernetes-validate rejected the objects rendered for $build" >&2
    exit 1
  }
  if grep -v ' passed for resource ' <<<"$out" | grep -q .; then
    echo "$out" >&2
    echo "check-chart: kubernetes-validate warned on the objects rendered for $build" >&2
    exit 1
  fi
  rendered=$((rendered + $(grep -c ' passed for resource ' <<<"$out")))
done
echo "   $rendered objects (claims and source, stage and assemble pods) of $(ls "$work"/render/*.yaml | wc -l) ImageBuilds passed"

echo "== 10. Pod Security, by checkov $("$checkov" --version): stage pods baseline, other build pods and the chart's workloads restricted"
# The checks that make up each Pod Security Standard. Stage pods run RUN steps as root on
# their base image: baseline is their level (their install container is restricted,
# which render.rs's tests check container by container). The other build pods are
# restricted and follow two rules of ours besides: no service account token, a
# read-only root; the chart's workloads are restricted (the operator needs its token).
baseline=CKV_K8S_16,CKV_K8S_17,CKV_K8S_18,CKV_K8S_19,CKV_K8S_25,CKV_K8S_26,CKV_K8S_27,CKV_K8S_31,CKV_K8S_39
restricted=$baseline,CKV_K8S_20,CKV_K8S_23,CKV_K8S_28,CKV_K8S_37
build_pods=$restricted,CKV_K8S_22,CKV_K8S_38
"$py" - "$work/pss" "$work"/render/*.objects "$work/default.yaml" "$work/all-features.yaml" <<'PY'
import os, sys, yaml
out = sys.argv[1]
os.makedirs(out, exist_ok=True)
levels = {"baseline": [], "restricted": [], "build-pods": []}
workloads = {"Pod", "Deployment", "CronJob", "Job", "StatefulSet", "DaemonSet"}
for path in sys.argv[2:]:
    for d in yaml.safe_load_all(open(path)):
        if not d or d.get("kind") not in workloads:
            continue
        labels = d["metadata"].get("labels") or {}
        ours = d["kind"] == "Pod" and labels.get("app.kubernetes.io/managed-by") == "stagecoach"
        if ours and labels.get("app.kubernetes.io/component") == "stage":
            levels["baseline"].append(d)
        else:
            levels["build-pods" if ours else "restricted"].append(d)
for level, docs in levels.items():
    assert docs, f"no {level} objects"
    yaml.safe_dump_all(docs, open(os.path.join(out, f"{level}.yaml"), "w"))
PY
for level in baseline restricted build-pods; do
  case $level in
    baseline) checks=$baseline ;;
    restricted) checks=$restricted ;;
    build-pods) checks=$build_pods ;;
  esac
  "$checkov" -f "$work/pss/$level.yaml" --framework kubernetes --skip-download --check "$checks" \
    --compact -o json >"$work/pss/$level.json" 2>"$work/pss/$level.err" || true
  "$py" - "$work/pss/$level.json" "$level" <<'PY' || exit 1
import json, sys
runs = json.load(open(sys.argv[1]))
runs = runs if isinstance(runs, list) else [runs]
failed = [c for r in runs for c in r["results"]["failed_checks"]]
summary = runs[0]["summary"]
for c in failed:
    print(f"check-chart: {c['resource']} fails {c['check_id']} ({c['check_name']})", file=sys.stderr)
if failed or summary["parsing_errors"]:
    sys.exit(f"check-chart: {len(failed)} {sys.argv[2]} findings, {summary['parsing_errors']} parsing errors")
print(f"   {sys.argv[2]}: {summary['resource_count']} objects, {summary['passed']} checks passed, none failed")
PY
done

echo "check-chart: all checks passed"
