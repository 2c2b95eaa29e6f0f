#!/usr/bin/env bash
# The documentation site, built from docs/ and the docstrings (mkdocs.yml) into site/, with every
# warning an error (`mkdocs build --strict`: a broken link, a missing page, a docstring whose
# arguments do not match its function). The tools come from PyPI into a throwaway environment;
# the package is read from its source (griffe), not imported, so nothing needs building first.
# Usage: bash scripts/build-docs.sh [mkdocs build options, e.g. -d /tmp/site]
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/tools"
"$work/tools/bin/pip" install -q "mkdocs>=1.6,<2" "mkdocs-material>=9.5,<10" "mkdocstrings[python]>=0.26,<2"
NO_MKDOCS_2_WARNING=1 "$work/tools/bin/mkdocs" build --strict "$@"
