"""Check the environment for DToP, even when ``import dtop`` itself fails.

Same report as ``python -m dtop.utils.collect_env`` (torch/CUDA, mmcv and its compiled
ops, mmengine, mmseg, the DToP registrations; exit 1 on a problem), but loaded from
the file so that a broken torch/mmcv/mmseg is reported instead of crashing in
``import dtop`` (which imports mmseg's models and mmcv's ops).

Example::

    python tools/misc/collect_env.py [--json]
"""
import importlib.util
import os.path as osp
import sys

ROOT = osp.abspath(osp.join(osp.dirname(__file__), '..', '..'))

if __name__ == '__main__':
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    spec = importlib.util.spec_from_file_location(
        'dtop_collect_env', osp.join(ROOT, 'dtop', 'utils', 'collect_env.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.exit(module.main())
