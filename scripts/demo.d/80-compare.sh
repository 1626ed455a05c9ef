#!/usr/bin/env bash
# Every model the demo built, on the same test resamples: table, figures and report.html.
# Each model uses its bundle's threshold, tuned on the val split when it was trained; the
# protocol line prints them. Paired differences are against `popular` when it was built.
set -euo pipefail
models=()
for dir in "$DEMO_OUT/teacher" "$DEMO_OUT/student" "$DEMO_OUT/student-no-distill" \
           "$DEMO_OUT"/baselines/*; do
  if [ -f "$dir/manifest.json" ] && grep -q '"kind": "leader-model"' "$dir/manifest.json"; then
    models+=("$dir")
  fi
done
if [ ${#models[@]} -eq 0 ]; then
  echo "no models in $DEMO_OUT to compare" >&2
  exit 1
fi
reference=()
[ -f "$DEMO_OUT/baselines/popular/manifest.json" ] && reference=(--reference popular)
leader compare --data "$DEMO_OUT/data" "${models[@]}" --out "$DEMO_OUT/report" --force \
  "${reference[@]}"
