#!/usr/bin/env bash
# The flagship story in one command: train the colour-biased model, then the debiased one (grayscale
# pre-processor, same data), then compare them side by side.
#
#   bash experiments/bias_story.sh OUT_DIR [--configs BIASED.yaml DEBIASED.yaml] [ARGS...]
#
# DEBIASED.yaml is an overlay on BIASED.yaml (the debiased run is `fit --config BIASED --config DEBIASED`).
# The default pair is configs/quickstart.yaml and configs/quickstart_debiased.yaml (colour); the background
# shortcut's pair: --configs configs/scenes/biased.yaml configs/scenes/debiased.yaml.
#
# Every extra ARG goes to both `fit` runs, e.g. another digit pair and palette:
#   bash experiments/bias_story.sh runs/story_14 --data.digits '[1,4]' --data.colors '[cyan,magenta]'
# Add `--model.init_args.init_checkpoint OUT_DIR/biased/checkpoints/last.ckpt` yourself to
# retrain the debiased model from the biased one (it is a separate run here for a clean comparison).
#
# With Captum installed (pip install -e ".[attribution]", part of the dev extra) both runs also log pixel
# attributions (AttributionProbe) and the report gets a method-comparison table.
#
# Writes OUT_DIR/{biased,debiased}/ (version_N: CSV metrics, config, probe plans; checkpoints/),
# OUT_DIR/wandb (one W&B group, job_type biased/debiased), OUT_DIR/report.md, OUT_DIR/summary.json and
# the report's PNG plots.
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: bash experiments/bias_story.sh OUT_DIR [--configs BIASED.yaml DEBIASED.yaml] [ARGS...]" >&2
  exit 2
fi
out="$1"
shift
biased_config=configs/quickstart.yaml
debiased_config=configs/quickstart_debiased.yaml
if [ "${1:-}" = "--configs" ]; then
  if [ $# -lt 3 ]; then
    echo "bias_story: --configs needs two files: BIASED.yaml DEBIASED.yaml" >&2
    exit 2
  fi
  biased_config="$2"
  debiased_config="$3"
  shift 3
fi
for config in "$biased_config" "$debiased_config"; do
  if [ ! -f "$config" ]; then
    echo "bias_story: no config file $config" >&2
    exit 2
  fi
done
if [ -e "$out/biased" ] || [ -e "$out/debiased" ]; then
  echo "bias_story: $out already holds runs; choose a new OUT_DIR" >&2
  exit 2
fi
mkdir -p "$out"
export XAI_RUN_DIR="$out"
export XAI_GROUP="${XAI_GROUP:-story-$(basename "$out")-$(date +%Y%m%d-%H%M%S)}"
start=$(date +%s)
extra=()
if python -c "import captum" 2>/dev/null; then  # pixel attributions next to the probe (the dev extra has Captum)
  extra=(--trainer.callbacks+=xai_lightning.callbacks.AttributionProbe --trainer.callbacks.num_images 32
         --trainer.callbacks.gradcam_layer net.layer2 --trainer.callbacks.occlusion_window 8
         --trainer.callbacks.occlusion_stride 4)
fi
python -m xai_lightning fit --config "$biased_config" "${extra[@]}" "$@"
python -m xai_lightning fit --config "$biased_config" --config "$debiased_config" "${extra[@]}" "$@"
python -m xai_lightning.report "$out/biased" "$out/debiased" --out "$out" --names biased debiased
echo "bias_story: done in $(( $(date +%s) - start )) s; see $out/report.md (W&B group $XAI_GROUP)"
echo "dashboard: after \`wandb sync $out/wandb/offline-run-*\` (if offline), run"
echo "  python -m xai_lightning.dashboard --entity <your W&B entity> --project xai-lightning --group $XAI_GROUP"
