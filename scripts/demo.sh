#!/usr/bin/env bash
# The main job end to end on the bundled sample data: set-up, sample -> LabelMe -> COCO, dataset
# report, fine-tune the Mask R-CNN on an ImageNet-pretrained EfficientNet-Lite0 (weights from pip) on
# the CPU, evaluate it, review its errors,
# render predictions.
# Re-running reuses what is there (delete data/ or output/lite0/ to start over).
source "$(dirname "$0")/env.sh"
set -euo pipefail
CONFIG=configs/mask_rcnn_lite0_FPN.yaml
OUT=output/lite0  # the config's run folder; a training finding it taken writes output/lite0-2, ...

echo "== 1/6 sample data: data/sample (LabelMe files)"
[ -f data/sample/labels.txt ] || python -m segkit.data.sample --out data/sample --num-images 40 --seed 0

echo "== 2/6 LabelMe -> COCO: data/trainval.json, train.json, val.json, images/ (+ dataset report)"
python labelme2coco.py data/sample --output data

echo "== 3/6 fine-tune Mask R-CNN on the ImageNet-pretrained EfficientNet-Lite0 -> $OUT"
if [ -f "$OUT/model_final.pth" ]; then
  echo "$OUT holds a trained model: evaluating it (rm -r $OUT to train again)"
  python train_net.py --eval-only --weights "$OUT"   # the model and its config come from the checkpoint
else
  python train_net.py --config-file $CONFIG --num-gpus 1
  OUT="output/$(cat output/latest_run)"  # the run just trained
fi

echo "== 4/6 evaluation on the val split: $OUT/eval/ (metrics JSON, PR curves, confusion matrix, best thresholds)"
python -m segkit.evaluation.coco "$OUT/eval/metrics_mydata_val.json"

echo "== 5/6 error review of the val split -> $OUT/review/index.html"
python -m segkit.loop.review "$OUT/eval" --quiet

echo "== 6/6 predictions on the val images -> $OUT/predictions/"
python predict.py --weights "$OUT" --input $(python -c "
import json; print(' '.join('data/images/' + i['file_name'] for i in json.load(open('data/val.json'))['images']))") \
  --output "$OUT/predictions" --quiet

cat <<MSG

Done. Look at:
  data/report.png                 dataset report
  $OUT/loss_curves.png     training and validation losses
  $OUT/train_batch_0.png   augmented training images with their labels
  $OUT/eval/pr_segm.png    precision-recall curves
  $OUT/eval/confusion_matrix_mydata_val.png, f1_mydata_val.png   confusion matrix, F1 vs threshold
  $OUT/review/index.html   error review, worst images first, with their LabelMe files
  $OUT/predictions/        overlays, masks, results.json
Open the app:   ./scripts/app.sh --weights $OUT   then browse to http://127.0.0.1:7860
After a training, predict.py, app.py, export_model.py and train_net.py --eval-only use the latest
run by themselves (output/latest_run); --weights takes a run folder, a run name or a checkpoint.
MSG
