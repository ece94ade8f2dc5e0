# Demo BASE model (no pruning) on the embedded synthetic dataset, sized for 2 CPU cores.
#
#   python -m dtop.datasets.demo_generator --out data/demo      # the data (seconds)
#   bash tools/dist_train.sh configs/demo/segvit_vit-t16-8l_1xb8-1200_demo-128x128.py \
#       work_dirs/demo/base
#
# DToP's 3-head SegViT shrunk to a ViT with embed 192 and 8 layers (stages of 3 / 3 / 2
# layers), trained from scratch for 1200 iterations on 128x128 crops; whole-image
# test at 384x480. Model, data and schedule: the demo files of configs/_base_/.
# `bash tools/run_demo.sh` runs BASE -> prune -> tests.
_base_ = [
    '../_base_/models/demo_vit-t16-8l.py', '../_base_/datasets/demo.py',
    '../_base_/schedules/demo_1200.py'
]
