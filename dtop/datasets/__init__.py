"""Datasets: the embedded synthetic demo dataset.

The generator lives in :mod:`dtop.datasets.demo_generator` (run it with
``python -m dtop.datasets.demo_generator``); it is not imported here so that
running it as a module stays clean.
"""
from .demo import DToPDemoDataset
from .demo_meta import CONFUSABLE_PAIRS, DEMO_CLASSES, DEMO_PALETTE

__all__ = ['DToPDemoDataset', 'DEMO_CLASSES', 'DEMO_PALETTE', 'CONFUSABLE_PAIRS']
