#!/usr/bin/env bash
# The main job on data the project makes itself: a dataset of shapes drawn over
# crops of the sample photos in data/, a small yolo cfg (cfg/shapes.cfg)
# trained on it from scratch, its mAP@0.5 on the held-out split, and detection
# on a validation image. Everything is written under out/.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-out}
mkdir -p "$out"
start=$(date +%s)
python scripts/make_dataset.py "$out/shapes"
pydarknet detector train "$out/shapes/shapes.data" cfg/shapes.cfg -dont_show --backup "$out/backup"
pydarknet detector map "$out/shapes/shapes.data" cfg/shapes.cfg "$out/backup/shapes_final.weights"
(cd "$out" && pydarknet detector test shapes/shapes.data ../cfg/shapes.cfg backup/shapes_final.weights \
    shapes/sample.jpg -dont_show -ext_output)
echo "trained, evaluated and detected in $(( $(date +%s) - start )) s"
echo "annotated picture: $(realpath "$out")/predictions.jpg"
