#!/usr/bin/env bash
# 3D-E (trainer.models.net3d.Net3DE), the dense pass's efficient network, from nothing on a CPU
# (about 25 min per round on 2 cores, most of it generating and mining the phantoms): a first
# model with the shipped 3D-1's false positives as hard negatives, then rounds that each add the
# false positives of the previous round (seed 000's hard-negative option). Each round's package
# needs its own model id: mined negatives are cached by it.
#   bash trainer/configs/dense_e_recipe.sh [RUNS_DIR] [ROUNDS]
# Then two rounds of distillation from the shipped 3D-1 v6 (trainer/checkpoints/stage1_3d1_v6) on the
# labels and v6's logits (about 30 min each on 2 cores). trainer/checkpoints/stage1_3de/ is the second
# (d2, HISTORY.md there), the stage-1 CNN of the shipped package v14. The hard-negative loop is run
# for 3 rounds (a fourth scored lower on the held-out phantoms).
set -euo pipefail
R=${1:-runs}
N=${2:-3}
# 3D-1 v6 alone as a package: its false positives are round 1's hard negatives (it was the dense graph
# of the packages up to v13; v14's is 3D-E)
noduleflow export trainer/checkpoints/stage1_3d1_v6/best.safetensors "$R/pkg_v6" --model-id noduleflow-3d1-phantom-v6 \
    --overwrite
noduleflow train --config trainer/configs/dense_e.toml --hard-negatives "$R/pkg_v6" \
    --out "$R/dense_e1"
noduleflow export "$R/dense_e1/best.safetensors" "$R/pkg_e1" --model-id noduleflow-3de-phantom-r1 --overwrite
HARD=(--hard-negatives "$R/pkg_v6" --hard-negatives "$R/pkg_e1")
for ((i = 2; i <= N; i++)); do
  noduleflow train --config trainer/configs/dense_e_hard.toml --init "$R/dense_e$((i - 1))/best.safetensors" \
      "${HARD[@]}" --seed $((10 + i)) --out "$R/dense_e$i"
  noduleflow export "$R/dense_e$i/best.safetensors" "$R/pkg_e$i" --model-id "noduleflow-3de-phantom-r$i" --overwrite
  HARD+=(--hard-negatives "$R/pkg_e$i")
done
HARD=(--hard-negatives "$R/pkg_v6" --hard-negatives "$R/pkg_e1" --hard-negatives "$R/pkg_e2"
      --hard-negatives "$R/pkg_e3")
noduleflow train --config trainer/configs/dense_e_distill.toml --init "$R/dense_e$N/best.safetensors" \
    "${HARD[@]}" --out "$R/dense_ed1"
noduleflow train --config trainer/configs/dense_e_distill.toml --init "$R/dense_ed1/best.safetensors" \
    --epochs 15 --seed 22 --distill 0.7 "${HARD[@]}" --out "$R/dense_ed2"
noduleflow export "$R/dense_ed2/best.safetensors" "$R/pkg_ed2" --model-id noduleflow-3de-phantom-d2 --overwrite
python -m noduleflow.trainer.evaluate.cohort --cohort heldout --stages 1 --model "$R/pkg_ed2" --out "$R/accuracy_ed2"
# The package v14 (engine/models/default): this stage-1 CNN with v13's stage 2. The shipped
# stage2.onnx and stage2_int8.onnx were then copied from v13 byte for byte (an export of the same
# stage-2 checkpoint gives the same logits in differently serialised files) and the manifest's
# sha256 entries and stage-2 export records set to v13's.
# noduleflow export "$R/dense_ed2/best.safetensors" engine/models/default --stage2 trainer/checkpoints/stage2/best.safetensors \
#     --stage2-spec trainer/checkpoints/stage2/spec.json --int8 --model-id noduleflow-2stage-phantom-v14 --overwrite
