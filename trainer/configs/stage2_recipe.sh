#!/usr/bin/env bash
# The shipped two-stage default (v7): the v6 3D-1 (default_recipe.sh) as stage 1's CNN and as
# stage 2's starting point, stage 2 trained on the stage-1 candidates of the training phantoms,
# the settings chosen on the tuning cohort, the probability calibrated on the validation
# phantoms, then the held-out figures. On a 2-core CPU: data about 30 s per training scan
# (phantom synthesis and preprocessing included), training about 4 min per epoch.
#   bash trainer/configs/stage2_recipe.sh [RUNS_DIR] [EPOCHS]
set -euo pipefail
R=${1:-runs}
EPOCHS=${2:-20}
export NODULEFLOW_COHORT_CACHE=${NODULEFLOW_COHORT_CACHE:-$HOME/.cache/noduleflow/cohorts}
S1=trainer/checkpoints/default/best.safetensors
DATA="$R/stage2_data"
python -m noduleflow.trainer.data.stage2 --seeds train validation --out "$DATA"
python -m noduleflow.trainer.stage2_train --data "$DATA" --out "$R/stage2" --init "$S1" --epochs "$EPOCHS" --threads 1
# stage-1 generator, candidate cap and flips as chosen on the tuning cohort (bench/results/stage2_tuning/)
noduleflow export "$S1" "$R/pkg_v7_uncalibrated" --stage2 "$R/stage2/best.safetensors" \
    --stage2-spec trainer/checkpoints/stage2/spec_uncalibrated.json --model-id noduleflow-2stage-phantom-v7 --overwrite
python -m noduleflow.bench.stage2_tuning --model "$R/pkg_v7_uncalibrated" --cohort tuning --cache "$R/stage2_tuning" \
    --out "$R/stage2_tuning"
python -m noduleflow.trainer.stage2_calibrate --model "$R/pkg_v7_uncalibrated" --out trainer/checkpoints/stage2/spec.json
noduleflow export "$S1" engine/models/default --stage2 "$R/stage2/best.safetensors" \
    --stage2-spec trainer/checkpoints/stage2/spec.json --model-id noduleflow-2stage-phantom-v7 --overwrite
python -m noduleflow.bench.accuracy_cohort --cohort heldout --out bench/results/accuracy_heldout/v7
python -m noduleflow.bench.stage1_recall --cohort heldout --lists-cache "$R/stage1_lists" --min-response 10 \
    --out bench/results/stage1_recall/heldout
