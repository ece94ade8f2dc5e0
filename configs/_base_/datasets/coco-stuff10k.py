# COCO-Stuff-10K (171 classes; label 0 = unlabeled is ignored via
# reduce_zero_label, set in the dataset *and* the pipeline as the official config),
# 512x512 crops: the COCO-Stuff-10K ViT-L/16 row of the DToP paper (Tang et al.,
# ICCV 2023, Sec. 4). Evaluation is on test2014 (the official config's val split).
#
# Layout (mmseg's, made by tools/dataset_converters/): data/coco_stuff10k/
#   images/{train2014,test2014}/*.jpg,
#   annotations/{train2014,test2014}/*_labelTrainIds.png
# Pipelines, loaders and metric are those of ade20k.py (same resize scale (2048, 512)
# and 512x512 crops); only the dataset and its folders differ.
_base_ = ['./ade20k.py']
dataset_type = 'COCOStuffDataset'
data_root = 'data/coco_stuff10k'
train_dataloader = dict(
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(img_path='images/train2014', seg_map_path='annotations/train2014')))
val_dataloader = dict(
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(img_path='images/test2014', seg_map_path='annotations/test2014')))
test_dataloader = val_dataloader
