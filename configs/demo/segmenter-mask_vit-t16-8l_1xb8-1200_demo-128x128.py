# Demo BASE model: Segmenter (mask transformer) with DToP's auxiliary ATM heads, on
# the embedded synthetic dataset, sized for 2 CPU cores.
#
#   bash tools/run_demo.sh --model segmenter  # BASE -> prune -> test
#
# Data, schedule and runtime are those of the SegViT demo BASE config; the model
# (_base_/models/demo_segmenter-mask_vit-t16-8l.py) is the same small ViT (with a cls
# token and a final norm, as Segmenter), the same stages and auxiliary ATM heads as
# the SegViT demo, with Segmenter's mask transformer as the final head.
_base_ = [
    '../_base_/models/demo_segmenter-mask_vit-t16-8l.py', '../_base_/datasets/demo.py',
    '../_base_/schedules/demo_1200.py'
]
