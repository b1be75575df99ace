#!/usr/bin/env bash
# Proves the wheel works outside the checkout: build wheel + sdist, check both carry the
# web kit (sw.js, subscribe.js, index.html), install the wheel into a fresh virtualenv,
# run the demo with a few hundred subscribers and `web init` from the installed copy.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PY" -m build -o "$work/dist" . >"$work/build.log" 2>&1 || { cat "$work/build.log" >&2; exit 1; }
wheel=$(ls "$work"/dist/pushcli-*.whl)
sdist=$(ls "$work"/dist/pushcli-*.tar.gz)
wheel_files=$("$PY" -m zipfile -l "$wheel")
sdist_files=$(tar tzf "$sdist")
for f in sw.js subscribe.js index.html; do
  grep -q "pushcli/web/$f" <<<"$wheel_files" || { echo "wheel lacks web/$f" >&2; exit 1; }
  grep -q "src/pushcli/web/$f" <<<"$sdist_files" || { echo "sdist lacks web/$f" >&2; exit 1; }
done
python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q "$wheel"
cd "$work"   # away from the checkout: only the installed copy can be imported
"$work/venv/bin/pushcli" demo --dir "$work/demo" --subscribers 300 --json > "$work/demo.json"
"$work/venv/bin/python" - "$work/demo.json" <<'PY'
import json, sys
doc = json.load(open(sys.argv[1]))
assert doc["first_campaign"]["sent"] == 300, doc["first_campaign"]
assert doc["pruned"] > 0 and doc["remaining"] == 300 - doc["pruned"], doc
PY
"$work/venv/bin/pushcli" web init "$work/site" --key "$work/demo/vapid_private.pem" >/dev/null
for f in sw.js subscribe.js index.html; do test -s "$work/site/$f"; done
echo "wheel ok: $(basename "$wheel"), demo and web init work from a fresh virtualenv"
