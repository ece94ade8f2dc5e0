"""Test-time augmentation that keeps DToP's pruning statistics of every pass.

mmseg's :class:`~mmseg.models.SegTTAModel` averages the predictions of the
augmented passes and returns the *last* pass's sample as the result, so only that
pass's ``dtop_stats`` reached :class:`~dtop.evaluation.IoUFlopsMetric`: the
reported GFLOPs were those of one pass of several. :class:`DToPTTAModel` merges
the predictions the same way and adds ``dtop_stats['passes']``: the statistics
(``token_counts``, ``grid_tokens``, ``crop_shape``, ``heads_run``) of every
pass, in order. The metric sums the cost over passes (GFLOPs per image = the sum
over the augmented passes); the other keys stay those of the returned pass, so
the exit-map visualisation is unchanged.
"""
from typing import List

from mmseg.models.segmentors import SegTTAModel
from mmseg.registry import MODELS
from mmseg.utils import SampleList

_PASS_KEYS = ('token_counts', 'grid_tokens', 'crop_shape', 'heads_run')


def merge_pass_stats(pass_stats: List[dict]) -> List[dict]:
    """The per-pass statistics kept by :class:`DToPTTAModel` (no exit maps).

    Args:
        pass_stats (list[dict]): ``dtop_stats`` of each augmented pass.

    Returns:
        list[dict]: one dict per pass with the keys the GFLOPs need.
    """
    return [{k: s[k] for k in _PASS_KEYS if k in s} for s in pass_stats]


@MODELS.register_module()
class DToPTTAModel(SegTTAModel):
    """:class:`SegTTAModel` that carries ``dtop_stats`` of all augmented passes.

    Use it as ``tta_model = dict(type='DToPTTAModel')`` (the DToP runtime base
    does); ``tools/test.py --tta`` wraps the configured model with it.
    """

    def merge_preds(self, data_samples_list: List[SampleList]) -> SampleList:
        """Merge as :meth:`SegTTAModel.merge_preds`, keeping every pass's stats.

        Args:
            data_samples_list (list[list[SegDataSample]]): per image, the
                samples of its augmented passes.

        Returns:
            list[SegDataSample]: one merged sample per image; its
            ``dtop_stats['passes']`` lists the statistics of all passes.

        Raises:
            KeyError: when some passes of an image carry ``dtop_stats`` and others
                do not (the GFLOPs would silently cover only part of the work).
        """
        per_image = [[s.metainfo.get('dtop_stats') for s in samples]
                     for samples in data_samples_list]
        merged = super().merge_preds(data_samples_list)
        for sample, stats in zip(merged, per_image):
            present = [s for s in stats if s is not None]
            if not present:
                continue
            if len(present) != len(stats):
                raise KeyError(f'DToPTTAModel: only {len(present)} of {len(stats)} '
                               f'augmented passes of {sample.metainfo.get("img_path")} '
                               'carry "dtop_stats"; is the wrapped model a '
                               'DToPEncoderDecoder?')
            carrier = dict(sample.metainfo.get('dtop_stats') or present[-1])
            carrier['passes'] = merge_pass_stats(present)
            sample.set_metainfo(dict(dtop_stats=carrier))
        return merged
