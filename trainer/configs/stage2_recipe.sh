#!/usr/bin/env bash
# The shipped stage-2 network (v15; the stage 2 of package noduleflow-2stage-v15, engine/models/default),
# from the round before it (trainer/checkpoints/stage2/v13: v14's stage 2). This is the current round
# only: how each earlier round was made lives in each checkpoint folder and in git history (the recipe
# of v13 is this file at commit a2499b3).
#   bash trainer/configs/stage2_recipe.sh [RUNS_DIR]
# On a 2-core CPU: the hybrid scans about 10 s each, the phantoms about 30 s each (synthesis and
# preprocessing included); training about 8 min per epoch plus 4-10 min per scoring of the negatives.
set -euo pipefail
R=${1:-runs}
export NODULEFLOW_COHORT_CACHE=${NODULEFLOW_COHORT_CACHE:-$HOME/.cache/noduleflow/cohorts}
REAL=../shared/realct/LIDC-IDRI-0314   # the real scan: its LEFT lung may be trained on, its right lung never
PREV=trainer/checkpoints/stage2/v13/best.safetensors

# Training sources: lesions inserted into the real scan's left lung (24 variants, role "training";
# the right lung is left out of every label: trainer.data.stage2 --source keeps to the lung that
# source.json names), and 8 more left-lung variants for the calibration only.
noduleflow synth "$R/hybrid_train" --hybrid "$REAL" --lung left --scans 24 --seed 2
noduleflow synth "$R/hybrid_calib" --hybrid "$REAL" --lung left --scans 8 --seed 3

# Data: the whole stage 1 of v15 (blobs 150, subsolid 50, pleural 10, ground-glass 25; trainer.data
# .stage2.FULL_STAGE1) with every negative of the supplementary passes, on the hybrid scans, on 24
# phantoms of the wide training generator and on 30 phantoms of the default one, plus the validation
# phantoms (2000-2005, for the validation AUC only).
python -m noduleflow.trainer.data.stage2 --source "$R/hybrid_train" --full --out "$R/st2/hybrid"
python -m noduleflow.trainer.data.stage2 --seeds 6000-6023 --phantom-generator wide --full --out "$R/st2/wide"
python -m noduleflow.trainer.data.stage2 --seeds validation 1000-1029 --full --out "$R/st2/default"

# Training: v13 continued on the three, half of each batch's negatives from the 3,000 the model scores
# highest (10,000 others drawn afresh at each scoring). v15 is epoch 2 of a run started with --epochs 4
# and stopped after epoch 2 for time (no epoch was chosen by any figure; the learning rate is constant,
# so --epochs 2 runs the same two epochs). Its first epoch saw 67 of the 78 training scans (the
# default-phantom data was still being written); this recipe waits for all of them.
python -m noduleflow.trainer.stage2_train --data "$R/st2/hybrid" "$R/st2/wide" "$R/st2/default" --out "$R/st2/train" \
    --init-stage2 "$PREV" --train-seeds 0-23 6000-6023 1000-1029 --min-train-scans 78 --lr 1e-4 --epochs 2 \
    --steps 150 --threads 2 --hard-negatives 0.5 --hard-pool 3000 --hard-score 10000 --rescore-every 2 --keep-epochs

# Calibration (Platt) on the validation phantoms and the 8 calibration variants' left lung, then the
# package (the stage-1 CNN is v14's, trainer/checkpoints/stage1_3de, run only with --stages 1; the spec
# carries the preprocessing stage 2 was trained on: the lung mask with the wall-lesion step).
noduleflow export trainer/checkpoints/stage1_3de/best.safetensors "$R/pkg_uncal" --stage2 "$R/st2/train/epoch2.safetensors" \
    --stage2-spec trainer/checkpoints/stage2/spec_uncalibrated_v15.json --model-id v15-uncalibrated --overwrite
python -m noduleflow.trainer.stage2_calibrate --model "$R/pkg_uncal" --source "$R/hybrid_calib" --out "$R/spec.json"
noduleflow export trainer/checkpoints/stage1_3de/best.safetensors "$R/pkg" --stage2 "$R/st2/train/epoch2.safetensors" \
    --stage2-spec "$R/spec.json" --int8 --model-id noduleflow-2stage-v15 --overwrite

# Its figures, the source furthest from training first (the evaluation sources: the synth commands in
# bench/results/accuracy_sources/README.md), and stage 1's recall per stratum on the same sources.
noduleflow synth "$R/heldout_generator" --generator heldout --format mhd --scans 30 --seed 7000
noduleflow synth "$R/hybrid_eval" --hybrid "$REAL" --lung right --scans 12 --seed 1
noduleflow bench accuracy --model "$R/pkg" --source heldout_generator="$R/heldout_generator" \
    --source hybrid_right_lung="$R/hybrid_eval" --cohort heldout --realct ../shared/realct --out "$R/accuracy_sources"
python -m noduleflow.trainer.evaluate.stage1_sources --model "$R/pkg" --source heldout_generator="$R/heldout_generator" \
    --source hybrid_right_lung="$R/hybrid_eval" --cohort heldout --out "$R/stage1_sources"
