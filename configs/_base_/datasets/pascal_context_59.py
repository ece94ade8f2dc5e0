# PASCAL-Context-59 (59 classes; label 0 = background is ignored via
# reduce_zero_label), 480x480 crops: the PC-59 ViT-L/16 row of the DToP paper
# (Tang et al., ICCV 2023, Sec. 4).
#
# Layout (mmseg's, made by tools/dataset_converters/): data/VOCdevkit/VOC2010/
#   JPEGImages/, SegmentationClassContext/*.png,
#   ImageSets/SegmentationContext/{train,val}.txt
# The resize scale (2048, 520) is the official config's ("compromise for mmengine
# Resize"); mmseg's own PC-59 config uses (520, 520). Pipelines, loaders and metric
# are otherwise those of ade20k.py.
_base_ = ['./ade20k.py']
dataset_type = 'PascalContextDataset59'
data_root = 'data/VOCdevkit/VOC2010/'
img_scale = (2048, 520)
crop_size = (480, 480)
# ade20k.py's pipelines with this scale and crop size (tta_pipeline rescales by
# ratios only and is unchanged).
__resized = dict(
    RandomResize=dict(scale=img_scale), RandomCrop=dict(crop_size=crop_size),
    Resize=dict(scale=img_scale))
train_pipeline = [dict(t, **__resized.get(t.type, {})) for t in _base_.train_pipeline]
test_pipeline = [dict(t, **__resized.get(t.type, {})) for t in _base_.test_pipeline]
__dataset = dict(
    type=dataset_type,
    data_root=data_root,
    data_prefix=dict(img_path='JPEGImages', seg_map_path='SegmentationClassContext'))
train_dataloader = dict(
    dataset=dict(
        __dataset,
        ann_file='ImageSets/SegmentationContext/train.txt',
        pipeline=train_pipeline))
val_dataloader = dict(
    dataset=dict(
        __dataset, ann_file='ImageSets/SegmentationContext/val.txt', pipeline=test_pipeline))
test_dataloader = val_dataloader
