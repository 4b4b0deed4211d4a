#!/usr/bin/env bash
# The shipped default model, from nothing, on a CPU (about 1 h 15 min on 2 cores):
# a first 3D-1 on 24 phantoms, then three fine-tuning rounds, each adding the false positives
# that the earlier models make on the same phantoms (seed 000's hard-negative option).
#   bash trainer/configs/default_recipe.sh [RUNS_DIR]
# The shipped v4 came from this sequence, but rounds 1-3 ran before positives were jittered by
# at least 3.5 mm (trainer.data.sampling.SamplingSpec.min_jitter_mm); re-running it today gives a
# similar, not bit-identical, model.
set -euo pipefail
R=${1:-runs}
noduleflow train --config trainer/configs/default.toml --out "$R/default"
noduleflow export "$R/default/best.safetensors" "$R/pkg_v1" --model-id noduleflow-3d1-phantom-v1 --overwrite
noduleflow train --config trainer/configs/default_hard.toml --init "$R/default/best.safetensors" \
    --hard-negatives "$R/pkg_v1" --out "$R/default_hard"
noduleflow export "$R/default_hard/best.safetensors" "$R/pkg_v2" --model-id noduleflow-3d1-phantom-v2 --overwrite
noduleflow train --config trainer/configs/default_hard.toml --init "$R/default_hard/best.safetensors" \
    --hard-negatives "$R/pkg_v1" --hard-negatives "$R/pkg_v2" --epochs 8 --out "$R/default_hard2"
noduleflow train --config trainer/configs/default_hard.toml --init "$R/default_hard2/best.safetensors" \
    --hard-negatives "$R/pkg_v1" --hard-negatives "$R/pkg_v2" --epochs 8 --out "$R/default_v4"
noduleflow export "$R/default_v4/best.safetensors" engine/models/default --model-id noduleflow-3d1-phantom-v4 \
    --overwrite
