#!/usr/bin/env bash
# The GitHub Actions workflows under .github/workflows, checked without GitHub: each must parse
# as YAML and validate against the GitHub workflow schema that check-jsonschema ships (vendored,
# no download); every job's `needs` must name jobs of its workflow and every action a version.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/tools"
"$work/tools/bin/pip" install -q "check-jsonschema>=0.28" "pyyaml>=6"
"$work/tools/bin/check-jsonschema" --builtin-schema vendor.github-workflows .github/workflows/*.yml
"$work/tools/bin/python" - <<'PY'
import pathlib, sys, yaml
for path in sorted(pathlib.Path(".github/workflows").glob("*.yml")):
    wf = yaml.safe_load(path.read_text())
    jobs = wf["jobs"]
    for name, job in jobs.items():
        for need in ([job["needs"]] if isinstance(job.get("needs"), str) else job.get("needs", [])):
            if need not in jobs:
                sys.exit(f"{path}: job {name!r} needs {need!r}, which is not a job of the workflow")
        for step in job.get("steps", []):
            uses = step.get("uses")
            if uses and "@" not in uses:
                sys.exit(f"{path}: job {name!r} uses {uses!r} without a version (@v...)")
    print(f"{path}: {len(jobs)} jobs, needs and action versions consistent")
PY
