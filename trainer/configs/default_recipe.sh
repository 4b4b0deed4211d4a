#!/usr/bin/env bash
# The shipped default model, from nothing, on a CPU (about 2 h 30 min on 2 cores):
# a first 3D-1 on 24 phantoms, then fine-tuning rounds, each adding the false positives
# that the earlier models make on the phantoms (seed 000's hard-negative option); rounds v5
# and v6 use 72 training phantoms.
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
noduleflow export "$R/default_v4/best.safetensors" "$R/pkg_v4" --model-id noduleflow-3d1-phantom-v4 --overwrite
noduleflow train --config trainer/configs/default_v5.toml --init "$R/default_v4/best.safetensors" \
    --hard-negatives "$R/pkg_v4" --out "$R/default_v5"
noduleflow export "$R/default_v5/best.safetensors" "$R/pkg_v5" --model-id noduleflow-3d1-phantom-v5 --overwrite
noduleflow train --config trainer/configs/default_v5.toml --init "$R/default_v5/best.safetensors" \
    --hard-negatives "$R/pkg_v4" --hard-negatives "$R/pkg_v5" --epochs 8 --seed 6 --out "$R/default_v6"
noduleflow export "$R/default_v6/best.safetensors" engine/models/default --model-id noduleflow-3d1-phantom-v6 \
    --overwrite
