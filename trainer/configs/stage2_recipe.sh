#!/usr/bin/env bash
# The shipped stage-2 network (v13; the stage 2 of package v14, engine/models/default), from the
# round before it (trainer/checkpoints/stage2/v12: the mean of three epochs of v12). This is the
# current round only: how each earlier round (v7-v12) was made, and why, lives in each checkpoint
# folder's history (trainer/checkpoints/*/HISTORY.md); the recipe that replayed every round is
# this file at commit 9068c40.
#   bash trainer/configs/stage2_recipe.sh [RUNS_DIR]
# On a 2-core CPU: data about 30 s per training scan (phantom synthesis and preprocessing included),
# training 5-10 min per epoch (hard-negative scoring included), selection about 1 h.
set -euo pipefail
R=${1:-runs}
export NODULEFLOW_COHORT_CACHE=${NODULEFLOW_COHORT_CACHE:-$HOME/.cache/noduleflow/cohorts}
S1=trainer/checkpoints/stage1_3d1_v6/best.safetensors   # 3D-1 v6: the selection packages' CNN (and stage2_train's default --init)
PREV=trainer/checkpoints/stage2/v12/best.safetensors
DATA="$R/stage2_data"
SUB="$R/stage2_data_subsolid"
WALL="$R/stage2_data_wall"

# Data: stage 1 as the engine runs it on the 400 training phantoms (train_more, and train_kernels
# made with the standard, smooth and sharp reconstruction kernels) and the validation phantoms:
# blobs >= 10 capped at 200, at most 50 of the subsolid pass, at most 30 of the pleural pass.
for k in "validation standard" "train_more standard" "1372-1505 standard" "1506-1538 smooth" "1539-1571 sharp"; do
  set -- $k
  python -m noduleflow.trainer.data.stage2 --seeds "$1" --kernel "$2" --generator blobs --max-candidates 200 \
      --min-response 10 --out "$DATA"
  python -m noduleflow.trainer.data.stage2 --seeds "$1" --kernel "$2" --subsolid 50 --out "$SUB"
  python -m noduleflow.trainer.data.stage2 --seeds "$1" --kernel "$2" --wall 30 --out "$WALL"
done

# Training: v12 continued 4 epochs on all three, half of each batch's negatives from the 3,000 the
# model scores highest (rescored every second epoch with 10,000 others drawn afresh); every epoch kept.
python -m noduleflow.trainer.stage2_train --data "$DATA" "$SUB" "$WALL" --out "$R/stage2" \
    --init-stage2 "$PREV" --train-seeds train_more train_kernels --lr 1e-4 --epochs 4 --steps 150 --threads 2 \
    --hard-negatives 0.5 --hard-pool 3000 --hard-score 10000 --rescore-every 2 --keep-epochs
python -m noduleflow.trainer.stage2_average --checkpoints "$R"/stage2/epoch{2,3,4}.safetensors \
    --data "$DATA" "$SUB" "$WALL" --train-seeds train_more train_kernels --out "$R/stage2/avg234"

# Selection on the tuning cohort, each candidate at the shipped settings (spec_uncalibrated_v13.json:
# blobs 150 + subsolid 50 + pleural 10, 8 flips for the best 25): epoch 4 was chosen.
for e in epoch2 epoch3 epoch4 avg234; do
  noduleflow export "$S1" "$R/pkg_$e" --stage2 "$R/stage2/$e.safetensors" \
      --stage2-spec trainer/checkpoints/stage2/spec_uncalibrated_v13.json --model-id "stage2_$e" --overwrite
done
python -m noduleflow.trainer.evaluate.stage2_select --models "$R"/pkg_{epoch2,epoch3,epoch4,avg234} --cohort tuning \
    --cache "$R/stage2_select" --out "$R/stage2_select"

# Calibration of the chosen epoch on the validation phantoms, then the package (the shipped stage-1
# CNN, trainer/checkpoints/stage1_3de; stage 2 also in INT8) and its held-out figures.
python -m noduleflow.trainer.stage2_calibrate --model "$R/pkg_epoch4" --out "$R/spec.json"
noduleflow export trainer/checkpoints/stage1_3de/best.safetensors "$R/pkg" --stage2 "$R/stage2/epoch4.safetensors" \
    --stage2-spec "$R/spec.json" --int8 --model-id noduleflow-2stage-phantom-v14 --overwrite
python -m noduleflow.trainer.evaluate.cohort --model "$R/pkg" --cohort heldout --out "$R/accuracy_heldout"
python -m noduleflow.trainer.evaluate.kernels --model "$R/pkg" --seeds 5000-5019 --out "$R/kernels"
