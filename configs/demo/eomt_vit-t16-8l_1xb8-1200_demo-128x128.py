# Demo BASE model: EoMT (DINOv2-style ViT + query blocks) with DToP's auxiliary ATM
# heads, on the embedded synthetic dataset, sized for 2 CPU cores.
#
#   bash tools/run_demo.sh --model eomt  # BASE -> prune -> test
#
# Data and runtime are those of the SegViT demo BASE config; the model
# (_base_/models/demo_eomt_vit-t16-8l.py) is a 6-layer DINOv2-style ViT and an EoMT
# head of 2 query blocks (8 layers in all), with the SegViT demo's auxiliary ATM
# heads. The schedule (_base_/schedules/demo_eomt_1200.py) is the demo's 1200
# iterations plus EoMT's mask annealing, over before the checkpoint is saved.
_base_ = [
    '../_base_/models/demo_eomt_vit-t16-8l.py', '../_base_/datasets/demo.py',
    '../_base_/schedules/demo_eomt_1200.py'
]
