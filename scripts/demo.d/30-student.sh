#!/usr/bin/env bash
# LEADER student: distilled from the demo teacher's exported features, and the ablation without
# distillation (--alpha 0, no teacher needed). Both print their test metrics next to the teacher's.
set -euo pipefail
DATA="$DEMO_OUT/data"
leader distill --data "$DATA" --teacher "$DEMO_OUT/teacher" --out "$DEMO_OUT/student" \
  --epochs 30 --patience 10 --force
leader distill --data "$DATA" --teacher "$DEMO_OUT/teacher" --out "$DEMO_OUT/student-no-distill" \
  --alpha 0 --epochs 30 --patience 10 --force
