#!/usr/bin/env bash
# The GPU check: every GPU measurement of docs/performance.md in one run, one table at the end.
#
#   bash experiments/gpu_check.sh OUT_DIR            # on a CUDA machine (about 10 minutes on one H100)
#   bash experiments/gpu_check.sh OUT_DIR --smoke    # the same steps at toy sizes on the CPU (CI runs it)
#
# 1. matching: the surgery's single-pass matching against plain matmul of the same FLOPs (paper shapes:
#    ResNet-50's 49 convs x RN50's four stages at 224 px);
# 2. probe cost: one training epoch of ResNet-50 at 224 px with 2,000 probe images, the ConceptProbe (the
#    verdict) and the SurgeryProbe (into a randomly initialised open_clip RN50 at 224 px) beside it:
#    probe seconds / training-epoch seconds, from the run's own metrics;
# 3. DDP: the verdict and the surgery on 1 and on 2 GPUs give the same numbers (skipped with fewer than 2).
# Writes OUT_DIR/gpu_check.md (and each step's raw output beside it).
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: bash experiments/gpu_check.sh OUT_DIR [--smoke]" >&2
  exit 2
fi
out="$1"
smoke="${2:-}"
mkdir -p "$out"
cd "$(dirname "$0")/.."
export WANDB_MODE=disabled
if [ "$smoke" = "--smoke" ]; then
  device=cpu; gpus=0
  bench=(--images 2 --batch-size 2 --image-size 64 --repeats 1 --skip-naive)
  fit=(--data.init_args.train_per_class 8 --data.init_args.test_per_class 4 --data.init_args.real_world_per_class 4
       --data.init_args.probe_per_class 20 --data.init_args.image_size 64 --model.init_args.backbone resnet18
       --trainer.accelerator cpu)
else
  device=cuda; gpus=$(python -c "import torch; print(torch.cuda.device_count())")
  bench=(--images 64 --batch-size 32 --image-size 224 --repeats 3 --skip-naive)
  fit=(--data.init_args.train_per_class 3200 --data.init_args.probe_per_class 1000 --data.init_args.image_size 224
       --data.init_args.batch_size 128 --trainer.accelerator gpu --trainer.precision 16-mixed)
fi
echo "[gpu_check] 1/3 matching vs matmul ($device)"
python experiments/bench_matching.py --device "$device" "${bench[@]}" --out "$out/bench" | tee "$out/bench.jsonl"

echo "[gpu_check] 2/3 probe cost per training epoch"
cat > "$out/cost.yaml" <<YAML
# the quickstart's data and model; the probes and the timer only (written by experiments/gpu_check.sh)
trainer:
  max_epochs: 1
  devices: 1
  num_sanity_val_steps: 0
  logger: {class_path: lightning.pytorch.loggers.CSVLogger, init_args: {save_dir: "$out/runs", name: cost}}
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {filename: last}
    - class_path: xai_lightning.callbacks.ConceptProbe
      init_args: {concepts: {shape: digit, color: color}}
    - class_path: xai_lightning.callbacks.SurgeryProbe
      init_args: {clip: {model: RN50}, reference: none, max_score_samples: 1000}
    - class_path: xai_lightning.callbacks.EpochTimer
YAML
probe=(--config configs/quickstart.yaml --config "$out/cost.yaml" "${fit[@]}")
python -m xai_lightning fit "${probe[@]}" > "$out/cost.log" 2>&1 || { tail -20 "$out/cost.log"; exit 1; }

echo "[gpu_check] 3/3 DDP equality"
if [ "$gpus" -ge 2 ]; then
  ckpt=$(ls "$out"/runs/cost/version_*/checkpoints/last.ckpt | tail -1)
  for n in 1 2; do
    torchrun --nproc_per_node "$n" -m xai_lightning validate "${probe[@]}" --trainer.devices "$n" \
      --trainer.strategy ddp --trainer.logger.init_args.name "ddp$n" --ckpt_path "$ckpt" > "$out/ddp$n.log" 2>&1
  done
else
  echo "fewer than 2 GPUs ($gpus): DDP equality skipped" | tee "$out/ddp.log"
fi
python experiments/gpu_table.py "$out" | tee "$out/gpu_check.md"
