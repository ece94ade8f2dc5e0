# ADE20K (150 classes, label 0 = "other" is ignored via reduce_zero_label),
# 640x640 crops: the ADE20K ViT-L/16 row of the DToP paper (Tang et al., ICCV 2023,
# Sec. 4). ade20k.py with the ViT-L resize scale (2560, 640) and crop (640, 640).
_base_ = ['./ade20k.py']
img_scale = (2560, 640)
crop_size = (640, 640)
# ade20k.py's pipelines with the new scale and crop size (tta_pipeline rescales by
# ratios only and is unchanged).
__resized = dict(
    RandomResize=dict(scale=img_scale), RandomCrop=dict(crop_size=crop_size),
    Resize=dict(scale=img_scale))
train_pipeline = [dict(t, **__resized.get(t.type, {})) for t in _base_.train_pipeline]
test_pipeline = [dict(t, **__resized.get(t.type, {})) for t in _base_.test_pipeline]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
