#!/usr/bin/env bash
# Recommend for one demo patient built from codes of the demo cohort's vocabulary.
# Uses the student bundle if the demo made one, else the first bundle found under $DEMO_OUT.
set -euo pipefail
: "${DEMO_OUT:?DEMO_OUT must be set}"

model=""
if [ -f "$DEMO_OUT/student/manifest.json" ]; then
  model="$DEMO_OUT/student"
else
  for manifest in $(find "$DEMO_OUT" -name manifest.json -not -path '*/.*' | sort); do
    if grep -q '"kind": "leader-model"' "$manifest"; then model="$(dirname "$manifest")"; break; fi
  done
fi
if [ -z "$model" ]; then
  echo "no model bundle under $DEMO_OUT; training the popular baseline to have one"
  leader train-baseline popular --data "$DEMO_OUT/data" --out "$DEMO_OUT/baselines/popular" --force
  model="$DEMO_OUT/baselines/popular"
fi

# A patient from the vocabulary: an earlier visit with drugs, and the visit to recommend for.
python3 - "$DEMO_OUT/data/vocab.json" "$DEMO_OUT/demo-patient.json" <<'PY'
import json, sys
vocab = json.load(open(sys.argv[1]))
dx = [d["code"] for d in vocab["diagnoses"]]
px = [d["code"] for d in vocab["procedures"]]
drugs = [d["code"] for d in vocab["drugs"]]
patient = {
    "profile": {"gender": "F", "age": 71},
    "visits": [
        {"diagnoses": dx[0:4], "procedures": px[0:1], "drugs": drugs[0:5]},
        {"diagnoses": dx[1:3] + dx[5:8], "procedures": px[1:3]},
    ],
}
json.dump(patient, open(sys.argv[2], "w"), indent=2)
PY

echo "model: $model; patient: $DEMO_OUT/demo-patient.json"
leader recommend --model "$model" --patient "$DEMO_OUT/demo-patient.json" --show 10
