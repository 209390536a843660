#!/usr/bin/env bash
# The GitOps health checks of docs/gitops.md, tested (`make chart-check` runs this):
#  1. docs/gitops.md shows docs/argocd-health.lua verbatim, and its argocd-cm patch
#     command carries that file unchanged;
#  2. the Argo CD health check, run by Debian's Lua interpreters (lua5.1, the dialect of
#     Argo CD's gopher-lua, and lua5.4, with integers and with floats for numbers as
#     Argo CD's JSON decoding gives them), answers what docs/fixtures/health_test.yaml
#     expects for every status fixture;
#  3. the fixtures follow the kstatus rules Flux reads (observedGeneration, a Ready
#     condition with a reason, Failed => Ready=False, ...), and kstatus' own algorithm
#     computes the expected status for each;
#  4. the Flux healthCheckExprs shown in docs/gitops.md, evaluated with cel-python in
#     Flux's order, give the expected status for each fixture.
# Needs scripts/install-deps.sh (lua5.1, lua5.4, .work/tools/venv with PyYAML and cel-python).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
py=$root/.work/tools/venv/bin/python
for tool in lua5.1 lua5.4 jq "$py"; do
  if ! command -v "$tool" >/dev/null; then
    echo "check-gitops: $tool is missing: run scripts/install-deps.sh" >&2
    exit 1
  fi
done
health=docs/argocd-health.lua
fixtures=docs/fixtures
work=$root/.work/check-gitops
rm -rf "$work"
mkdir -p "$work"

echo "== docs/gitops.md includes $health verbatim"
"$py" - "$health" docs/gitops.md <<'PY'
import re, sys
lua, doc = (open(p).read() for p in sys.argv[1:3])
blocks = re.findall(r"<!-- BEGIN docs/argocd-health.lua -->\n```lua\n(.*?)```\n<!-- END docs/argocd-health.lua -->", doc, re.S)
if len(blocks) != 1:
    sys.exit(f"check-gitops: docs/gitops.md must hold exactly one marked ```lua block, found {len(blocks)}")
if blocks[0] != lua:
    sys.exit("check-gitops: the Lua in docs/gitops.md differs from docs/argocd-health.lua: copy the file into the doc")
print("   the marked block equals the file")
PY

# The command docs/gitops.md gives for the argocd-cm patch, run for real.
jq -n --rawfile lua "$health" \
  '{data: {"resource.customizations.health.stagecoach.dev_ImageBuild": $lua}}' >"$work/argocd-cm-patch.json"
if ! grep -qF -- "--rawfile lua docs/argocd-health.lua" docs/gitops.md; then
  echo "check-gitops: docs/gitops.md no longer shows the jq patch command this script runs" >&2
  exit 1
fi
jq -e --rawfile lua "$health" \
  '.data["resource.customizations.health.stagecoach.dev_ImageBuild"] == $lua' \
  "$work/argocd-cm-patch.json" >/dev/null
echo "   the argocd-cm patch (jq --rawfile) carries the file unchanged"

# Fixtures as Lua tables: <name>.int.lua (integers) and <name>.float.lua (every number a
# float, as gopher-lua sees JSON numbers), plus the expectations as a TSV.
"$py" - "$fixtures" "$work" <<'PY'
import datetime, os, sys, yaml
fixtures, work = sys.argv[1:3]

def lua(value, floats):
    if isinstance(value, dict):
        return "{" + ", ".join(f"[{lua(str(k), floats)}] = {lua(v, floats)}"
                               for k, v in value.items() if v is not None) + "}"
    if isinstance(value, list):
        if any(v is None for v in value):
            raise SystemExit("check-gitops: null inside a list cannot be a Lua sequence")
        return "{" + ", ".join(lua(v, floats) for v in value) + "}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}.0" if floats else str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (datetime.date, datetime.datetime)):
        value = value.isoformat().replace("+00:00", "Z")
    out = []
    for ch in str(value).encode("utf-8"):
        c = chr(ch)
        if c in '\\"':
            out.append("\\" + c)
        elif 32 <= ch < 127:
            out.append(c)
        else:
            out.append(f"\\{ch:03d}")
    return '"' + "".join(out) + '"'

spec = yaml.safe_load(open(os.path.join(fixtures, "health_test.yaml")))
listed = {t["inputPath"] for t in spec["tests"]}
present = {f for f in os.listdir(fixtures) if f.endswith(".yaml") and f != "health_test.yaml"}
if listed != present:
    raise SystemExit(f"check-gitops: health_test.yaml lists {sorted(listed)} but docs/fixtures has {sorted(present)}")
with open(os.path.join(work, "expected.tsv"), "w") as tsv:
    for t in spec["tests"]:
        name = t["inputPath"]
        obj = yaml.safe_load(open(os.path.join(fixtures, name)))
        for kind, floats in (("int", False), ("float", True)):
            with open(os.path.join(work, f"{name}.{kind}.lua"), "w") as f:
                f.write("return " + lua(obj, floats) + "\n")
        hs = t["healthStatus"]
        tsv.write(f"{name}\t{hs['status']}\t{hs['message']}\n")
PY

# Runs the health check as Argo CD does: `obj` is a global, the chunk returns hs.
cat >"$work/harness.lua" <<'LUA'
obj = dofile(arg[2])
local check = assert(loadfile(arg[1]))
local hs = check()
assert(type(hs) == "table", "the health check must return a table")
io.write(tostring(hs.status), "\t", tostring(hs.message), "\n")
LUA

echo "== Argo CD health check ($health) on every status fixture"
failures=0
checks=0
while IFS=$'\t' read -r name want_status want_message; do
  for run in "lua5.1 float" "lua5.4 int" "lua5.4 float"; do
    read -r lua kind <<<"$run"
    got=$("$lua" "$work/harness.lua" "$health" "$work/$name.$kind.lua")
    checks=$((checks + 1))
    if [[ $got != "$want_status"$'\t'"$want_message" ]]; then
      echo "   FAIL $name ($lua, $kind numbers): got '$got', want '$want_status: $want_message'" >&2
      failures=$((failures + 1))
    fi
  done
  printf '   %-22s %-12s %s\n' "$name" "$want_status" "$want_message"
done <"$work/expected.tsv"
if ((failures)); then
  echo "check-gitops: $failures of $checks Argo CD health results differ" >&2
  exit 1
fi
echo "   $checks results as expected (lua5.1 and lua5.4: $(lua5.1 -v 2>&1 | cut -d' ' -f2), $(lua5.4 -v 2>&1 | cut -d' ' -f2))"

echo "== kstatus (Flux) rules on every status fixture"
"$py" - "$fixtures" <<'PY'
import os, re, sys, yaml
fixtures = sys.argv[1]
spec = yaml.safe_load(open(os.path.join(fixtures, "health_test.yaml")))
REASON = re.compile(r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")  # metav1.Condition.reason
problems = []

def kstatus(obj):
    """sigs.k8s.io/cli-utils kstatus Compute() for a custom resource: generic
    properties (deletion, observedGeneration, Reconciling/Stalled), then the Ready
    condition, else Current."""
    meta, status = obj.get("metadata", {}), obj.get("status") or {}
    if meta.get("deletionTimestamp"):
        return "Terminating"
    if "generation" in meta and "observedGeneration" in status \
            and status["observedGeneration"] != meta["generation"]:
        return "InProgress"
    conditions = status.get("conditions") or []
    for c in conditions:
        if c.get("type") == "Reconciling" and c.get("status") == "True":
            return "InProgress"
        if c.get("type") == "Stalled" and c.get("status") == "True":
            return "Failed"
    for c in conditions:
        if c.get("type") == "Ready":
            if c.get("status") == "True":
                return "Current"
            if c.get("status") in ("False", "Unknown"):
                return "InProgress"
    return "Current"

def rules(name, obj):
    """What the operator's statuses promise kstatus and its readers."""
    bad = lambda msg: problems.append(f"{name}: {msg}")
    status = obj.get("status")
    if not status:
        return bad("no status")
    gen = obj["metadata"].get("generation")
    if not isinstance(status.get("observedGeneration"), int):
        bad("status.observedGeneration missing")
    conds = {c.get("type"): c for c in status.get("conditions") or []}
    for kind in ("Ready", "Succeeded"):
        c = conds.get(kind)
        if c is None:
            bad(f"no {kind} condition")
            continue
        if c.get("status") not in ("True", "False", "Unknown"):
            bad(f"{kind}.status {c.get('status')!r} is not True, False or Unknown")
        if not REASON.match(c.get("reason") or ""):
            bad(f"{kind}.reason {c.get('reason')!r} is not a CamelCase reason")
        if "message" not in c or "lastTransitionTime" not in c:
            bad(f"{kind} lacks message or lastTransitionTime")
        if c.get("observedGeneration") != status.get("observedGeneration"):
            bad(f"{kind}.observedGeneration differs from status.observedGeneration")
    ready, succeeded = conds.get("Ready", {}), conds.get("Succeeded", {})
    phase = status.get("phase")
    if phase == "Failed":
        if ready.get("status") != "False" or succeeded.get("status") != "False":
            bad("Failed needs Ready=False and Succeeded=False")
        failure = status.get("failure") or {}
        if failure.get("reason") != ready.get("reason"):
            bad("Failed: status.failure.reason must be the Ready condition's reason")
        if not status.get("completionTime"):
            bad("Failed without completionTime")
        stalled = conds.get("Stalled", {})
        if stalled.get("status") != "True" or stalled.get("reason") != ready.get("reason"):
            bad("Failed needs Stalled=True with the Ready condition's reason (kstatus: Failed)")
    elif phase == "Succeeded":
        if ready.get("status") != "True" or succeeded.get("status") != "True":
            bad("Succeeded needs Ready=True and Succeeded=True")
        if not (status.get("image") or {}).get("digest"):
            bad("Succeeded without status.image.digest")
        if not status.get("completionTime"):
            bad("Succeeded without completionTime")
        if "Stalled" in conds:
            bad("Succeeded with a Stalled condition")
    elif phase in ("Pending", "Cloning", "Building", "Pushing"):
        if ready.get("status") != "False" or succeeded.get("status") != "Unknown":
            bad(f"{phase} needs Ready=False and Succeeded=Unknown")
    else:
        bad(f"unknown phase {phase!r}")

for t in spec["tests"]:
    name = t["inputPath"]
    obj = yaml.safe_load(open(os.path.join(fixtures, name)))
    if t.get("operatorStatus", True):
        rules(name, obj)
    got = kstatus(obj)
    if got != t["kstatus"]:
        problems.append(f"{name}: kstatus computes {got}, health_test.yaml expects {t['kstatus']}")
    status = obj.get("status") or {}
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
    print(f"   {name:22} phase={status.get('phase', '-'):10} Ready={ready.get('status', '-'):7} "
          f"reason={ready.get('reason', '-'):12} kstatus={got}")
if problems:
    sys.exit("check-gitops: kstatus rules broken:\n  " + "\n  ".join(problems))
print(f"   {len(spec['tests'])} fixtures follow the rules; kstatus as expected")
PY
echo "== Flux healthCheckExprs of docs/gitops.md on every status fixture (cel-python)"
"$py" - "$fixtures" docs/gitops.md <<'PY'
import os, re, sys, yaml
import celpy
fixtures, doc = sys.argv[1:3]
blocks = re.findall(r"<!-- BEGIN flux-kustomization -->\n```yaml\n(.*?)```\n<!-- END flux-kustomization -->",
                    open(doc).read(), re.S)
if len(blocks) != 1:
    sys.exit(f"check-gitops: docs/gitops.md must hold exactly one marked Flux Kustomization, found {len(blocks)}")
kustomization = yaml.safe_load(blocks[0])
(check,) = [c for c in kustomization["spec"]["healthCheckExprs"]
            if (c["apiVersion"], c["kind"]) == ("stagecoach.dev/v1alpha1", "ImageBuild")]
env = celpy.Environment()
programs = [(status, env.program(env.compile(check[key])))
            for key, status in (("inProgress", "InProgress"), ("failed", "Failed"), ("current", "Current"))
            if check.get(key)]

def flux(obj):
    """kustomize-controller's CEL status reader (RFC-0009): observedGeneration first,
    then inProgress, failed, current; none true (or an error) is InProgress."""
    gen, status = obj["metadata"].get("generation"), obj.get("status") or {}
    if "observedGeneration" in status and status["observedGeneration"] != gen:
        return "InProgress"
    activation = {k: celpy.json_to_cel(v) for k, v in obj.items()}
    for result, program in programs:
        try:
            value = program.evaluate(activation)
        except celpy.CELEvalError:
            return "InProgress"
        if isinstance(value, celpy.CELEvalError):
            return "InProgress"
        if bool(value):
            return result
    return "InProgress"

spec = yaml.safe_load(open(os.path.join(fixtures, "health_test.yaml")))
wrong = []
for t in spec["tests"]:
    got = flux(yaml.safe_load(open(os.path.join(fixtures, t["inputPath"]))))
    print(f"   {t['inputPath']:22} flux={got}")
    if got != t["flux"]:
        wrong.append(f"{t['inputPath']}: got {got}, health_test.yaml expects {t['flux']}")
if wrong:
    sys.exit("check-gitops: Flux health expressions:\n  " + "\n  ".join(wrong))
print(f"   {len(spec['tests'])} fixtures as expected")
PY
echo "check-gitops: all checks passed"
