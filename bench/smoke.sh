#!/usr/bin/env bash
# Smoke test of the benchmark, so it cannot rot: a tiny end-to-end run (all tools, 1 run) into a temp
# dir. Fails (non-zero) if any step of any tool fails, if any tool's restore differs from the source
# (diff -r against day 1), or if the ceilings or the results table are missing.
#   bench/smoke.sh [extra bench/run args, e.g. --tools restic,borg]
# The tiny corpus is cached in bench/out/corpus-tiny (built in ~10 s the first time). Needs root.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=$(mktemp -d /tmp/embassy-bench-smoke.XXXXXX)
trap 'rm -rf "$OUT"' EXIT
"$HERE/run" --size tiny --runs 1 --out "$OUT" "$@"
python3 - "$OUT" "$@" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
d = json.loads((out / "results.json").read_text())
tools = d["meta"]["tools_order"]
errs = []
if not tools:
    errs.append("no tool was measured")
for t in tools:
    rs = [r for r in d["results"] if r["tool"] == t]
    if not rs:
        errs.append(f"{t}: no results")
    for r in rs:
        for step in ("initial", "incremental", "restore", "verify"):
            if not r.get(step, {}).get("wall_s"):
                errs.append(f"{t} run {r['run']}: no {step} figure")
        if r.get("restore", {}).get("equal") is not True:
            errs.append(f"{t} run {r['run']}: restore was not compared equal to the source")
if "--no-ceilings" not in sys.argv and not d.get("ceilings"):
    errs.append("no ceilings measured")
if not (out / "results.md").read_text().count("| Initial backup: wall"):
    errs.append("results.md has no table")
if errs:
    print("bench smoke: FAILED\n  " + "\n  ".join(errs), file=sys.stderr)
    sys.exit(1)
print(f"bench smoke: ok ({', '.join(tools)}; restores equal to the source)")
PY
