# Demo BASE model: SETR-naive with DToP's stage layout, on the embedded synthetic
# dataset, sized for 2 CPU cores.
#
#   bash tools/run_demo.sh --model setr       # BASE -> prune -> test
#
# Data, schedule and runtime are those of the SegViT demo BASE config; the model
# (_base_/models/demo_setr-naive_vit-t16-8l.py) is the same small ViT with a cls
# token and a final norm, cut into four stages, each closed by SETR's 1x1 naive head.
_base_ = [
    '../_base_/models/demo_setr-naive_vit-t16-8l.py', '../_base_/datasets/demo.py',
    '../_base_/schedules/demo_1200.py'
]
