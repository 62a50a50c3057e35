#!/usr/bin/env bash
# The main job on the bundled data: detection with yolov4-tiny on data/dog.jpg.
# No trained weights ship with the project yet (they come with the training
# issue), so the demo writes seeded random weights first: the pipeline is
# real (cfg parsing, C forward, decoding, NMS, drawing), the boxes are not.
set -euo pipefail
cd "$(dirname "$0")/.."
weights=${WEIGHTS:-out/yolov4-tiny-random.weights}
mkdir -p out
if [ ! -f "$weights" ]; then
    python scripts/make_random_weights.py cfg/yolov4-tiny.cfg "$weights" --seed 1
fi
pydarknet detector test cfg/coco.data cfg/yolov4-tiny.cfg "$weights" data/dog.jpg \
    -dont_show -ext_output -thresh 0.5 > out/detections.txt
mv predictions.jpg out/predictions.jpg
head -n 8 out/detections.txt
echo "... $(($(wc -l < out/detections.txt) - 1)) detection lines in all (random weights: the boxes mean nothing), in out/detections.txt"
echo "annotated picture: $(pwd)/out/predictions.jpg"
