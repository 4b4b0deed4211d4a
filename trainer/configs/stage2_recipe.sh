#!/usr/bin/env bash
# The shipped two-stage default (v8): the v6 3D-1 (default_recipe.sh) as stage 1's CNN and as
# stage 2's starting point; stage 2 first trained on the stage-1 candidates of the 72 training
# phantoms (v7), then continued on 172 training phantoms (train + train_extra) with the subsolid
# pass's candidates added (v8); the settings chosen on the tuning cohort, the probability
# calibrated on the validation phantoms, then the held-out figures. On a 2-core CPU: data about
# 30 s per training scan (phantom synthesis and preprocessing included), training 4-7 min per epoch.
#   bash trainer/configs/stage2_recipe.sh [RUNS_DIR] [EPOCHS_V7] [EPOCHS_V8]
set -euo pipefail
R=${1:-runs}
EPOCHS=${2:-20}
EPOCHS_V8=${3:-10}
export NODULEFLOW_COHORT_CACHE=${NODULEFLOW_COHORT_CACHE:-$HOME/.cache/noduleflow/cohorts}
S1=trainer/checkpoints/default/best.safetensors
DATA="$R/stage2_data"
SUB="$R/stage2_data_subsolid"
# v7: stage 2 on the first 72 training phantoms
python -m noduleflow.trainer.data.stage2 --seeds train validation --out "$DATA"
python -m noduleflow.trainer.stage2_train --data "$DATA" --out "$R/stage2_v7" --init "$S1" --epochs "$EPOCHS" --threads 1
# v8: 100 more training phantoms, and the subsolid pass's candidates (engine.stage1.subsolid_blobs)
python -m noduleflow.trainer.data.stage2 --seeds train_extra --out "$DATA"
python -m noduleflow.trainer.data.stage2 --seeds validation train train_extra --subsolid 50 --out "$SUB"
python -m noduleflow.trainer.stage2_train --data "$DATA" "$SUB" --out "$R/stage2" \
    --init-stage2 "$R/stage2_v7/best.safetensors" --train-seeds train train_extra --lr 1e-4 --epochs "$EPOCHS_V8" --threads 2
# settings on the tuning cohort (bench/results/stage2_tuning/): blobs (response >= 10) capped at 200,
# + 50 subsolid, 4 flips for the best 50 by the first view, one candidate per lesion (1.5 x extent)
noduleflow export "$S1" "$R/pkg_v8_uncalibrated" --stage2 "$R/stage2/best.safetensors" \
    --stage2-spec trainer/checkpoints/stage2/spec_uncalibrated.json --model-id noduleflow-2stage-phantom-v8 --overwrite
python -m noduleflow.bench.stage2_tuning --model "$R/pkg_v8_uncalibrated" --cohort tuning --caps 150,200,250 \
    --cache "$R/stage2_tuning" --out "$R/stage2_tuning"
python -m noduleflow.trainer.stage2_calibrate --model "$R/pkg_v8_uncalibrated" --out trainer/checkpoints/stage2/spec.json
noduleflow export "$S1" engine/models/default --stage2 "$R/stage2/best.safetensors" \
    --stage2-spec trainer/checkpoints/stage2/spec.json --model-id noduleflow-2stage-phantom-v8 --overwrite
python -m noduleflow.bench.accuracy_cohort --cohort heldout --out bench/results/accuracy_heldout/v8
python -m noduleflow.bench.stage1_recall --cohort heldout --lists-cache "$R/stage1_lists" --min-response 10 \
    --subsolid 50 --out bench/results/stage1_recall/heldout
