#!/usr/bin/env bash
# Bad input and faults as a user meets them, through the CLI: seconds to the error, exit code, the error line,
# files left in the run folder. Prints a markdown table (about 4 minutes on 2 CPU cores).
#
#   bash experiments/bad_input.sh [WORK_DIR]
set -uo pipefail
cd "$(dirname "$0")/.."
Q=configs/quickstart.yaml
T="--data.init_args.train_per_class 20 --data.init_args.test_per_class 4 --data.init_args.real_world_per_class 4 --data.init_args.probe_per_class 20 --model.init_args.backbone resnet18 --trainer.max_epochs 1 --trainer.limit_train_batches 1 --trainer.logger lightning.pytorch.loggers.CSVLogger --trainer.logger.save_dir"
W="${1:-$(mktemp -d)}"
mkdir -p "$W"
export WANDB_MODE=disabled
case_() {
  name="$1"; shift
  d=$W/$(echo "$name" | tr -c 'a-zA-Z0-9' _)
  mkdir -p $d
  s=$(date +%s.%N)
  XAI_RUN_DIR=$d/runs timeout 300 "$@" > $d/out 2> $d/err
  rc=$?
  e=$(date +%s.%N)
  line=$(grep -m1 "^error:" $d/err || tail -1 $d/err)
  files=$(find $d/runs -type f 2>/dev/null | wc -l)
  printf "| %s | %s s | %s | %s | %s |\n" "$name" "$(awk "BEGIN {printf \"%.0f\", $e - $s}")" "$rc" "$line" "$files"
}
echo "| case | seconds to error | exit | error line | files left |"
echo "|---|---|---|---|---|"
case_ "digits [12]" python -m xai_lightning fit --config $Q --data.init_args.digits '[12]'
case_ "unknown colour" python -m xai_lightning fit --config $Q --data.init_args.colors '[red,grean]'
case_ "bias_strength 1.5" python -m xai_lightning fit --config $Q --data.init_args.bias_strength 1.5
case_ "digits [5]" python -m xai_lightning fit --config $Q --data.init_args.digits '[5]'
case_ "digits [1,4,7], 2 colours" python -m xai_lightning fit --config $Q --data.init_args.digits '[1,4,7]'
case_ "probe_per_class 1" python -m xai_lightning fit --config $Q --data.init_args.probe_per_class 1
head -c 5000 /dev/urandom > $W/corrupt.npz
case_ "corrupt .npz source" python -m xai_lightning fit --config $Q --data.init_args.source $W/corrupt.npz
python -c "import torch; torch.save({'a': 1}, '$W/plain.pt')"
case_ "non-Lightning .pt as --ckpt_path" python -m xai_lightning fit --config $Q $T $W/x1 --data.init_args.data_dir $W/data --ckpt_path $W/plain.pt
XAI_RUN_DIR=$W/base python -m xai_lightning fit --config $Q $T $W/base --data.init_args.data_dir $W/data > $W/base.out 2>&1  # a run to resume
ck=$(find $W/base -name "last.ckpt" | head -1)
head -c 100000 $ck > $W/truncated.ckpt
case_ "truncated checkpoint" python -m xai_lightning fit --config $Q $T $W/x2 --data.init_args.data_dir $W/data --ckpt_path $W/truncated.ckpt
case_ "resume with another backbone" python -m xai_lightning fit --config $Q $T $W/x3 --data.init_args.data_dir $W/data --ckpt_path $ck --model.init_args.backbone resnet34
case_ "rerun into a folder that holds a run" env XAI_RUN_DIR=$W/base python -m xai_lightning fit --config $Q $T $W/base --data.init_args.data_dir $W/data
T2="--data.init_args.train_per_class 20 --data.init_args.test_per_class 4 --data.init_args.real_world_per_class 4 --data.init_args.probe_per_class 20 --model.init_args.backbone resnet18 --trainer.max_epochs 1 --trainer.limit_train_batches 1"
case_ "WANDB_MODE=online without a login" env WANDB_MODE=online WANDB_API_KEY= HOME=$W/home NETRC=$W/none python -m xai_lightning fit --config $Q $T2 --data.init_args.data_dir $W/data
