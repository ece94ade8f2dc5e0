"""What DToP needs from the environment, and whether it is there.

Run it after installing DToP into an existing OpenMMLab environment::

    python -m dtop.utils.collect_env          # a readable report; exit 1 on a problem
    python -m dtop.utils.collect_env --json   # the same as JSON

It prints Python, torch (CUDA build, visible GPUs), torchvision, mmcv and whether
its compiled ops load, mmengine, mmsegmentation (and mmpretrain if present), the
``dtop`` version, and whether every DToP module registered into mmseg's
registries. Each requirement is checked against the range DToP declares
(``requirements.txt``); anything missing or out of range is listed with the fix.
"""
import argparse
import importlib
import json
import platform
import sys
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

#: Version ranges DToP needs (kept equal to requirements.txt; a test checks it).
#: ``(lower bound inclusive, upper bound exclusive or None)``.
REQUIRED_RANGES: Dict[str, Tuple[str, Optional[str]]] = OrderedDict(
    torch=('2.0.0', None),
    mmcv=('2.0.0rc4', '2.2.0'),
    mmengine=('0.10.0', '1.0.0'),
    mmseg=('1.2.0', '2.0.0'),
)

#: Modules ``import dtop`` must register, by mmseg registry.
DTOP_REGISTRATIONS: Dict[str, List[str]] = OrderedDict(
    MODELS=['DToPVisionTransformer', 'ATMPruneHead', 'DToPEncoderDecoder', 'ATMLoss'],
    DATASETS=['DToPDemoDataset'],
    METRICS=['IoUFlopsMetric'],
    HOOKS=['FlopsMetricDimsHook', 'PruneStatsHook'],
    VISUALIZERS=['DToPVisualizer'],
)


def _version_in_range(version: str, low: str, high: Optional[str]) -> bool:
    from packaging.version import parse
    v = parse(version.split('+')[0])
    if v < parse(low):
        return False
    return high is None or v < parse(high)


def _range_text(low: str, high: Optional[str]) -> str:
    return f'>={low}' + (f',<{high}' if high else '')


def collect_env() -> Tuple['OrderedDict[str, str]', List[str]]:
    """Versions and checks of everything DToP relies on.

    Returns:
        tuple: ``(info, problems)``. ``info`` maps a name (e.g. ``'PyTorch'``,
        ``'MMCV ops'``, ``'DToP modules registered'``) to a readable value;
        ``problems`` lists what is missing or out of range, each with its fix (empty
        when everything is in order).
    """
    info: 'OrderedDict[str, str]' = OrderedDict()
    problems: List[str] = []
    info['Python'] = sys.version.replace('\n', ' ')
    info['Platform'] = platform.platform()

    def check(module: str, version: str) -> None:
        low, high = REQUIRED_RANGES[module]
        if not _version_in_range(version, low, high):
            problems.append(f'{module} {version} is outside the range DToP supports '
                            f'({_range_text(low, high)}); install a version in range')

    # ------------------------------------------------------------- torch
    try:
        import torch
    except ImportError as e:
        info['PyTorch'] = f'not importable ({e})'
        problems.append('torch is not installed: install PyTorch for your CUDA version '
                        '(https://pytorch.org), then mmcv with ops')
        return info, problems
    info['PyTorch'] = torch.__version__
    check('torch', torch.__version__)
    info['PyTorch CUDA build'] = str(torch.version.cuda or 'none (CPU build)')
    cuda = torch.cuda.is_available()
    info['CUDA available'] = str(cuda)
    if cuda:
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info['GPUs'] = ', '.join(f'{i}: {n}' for i, n in enumerate(names))
        info['cuDNN'] = str(torch.backends.cudnn.version())
    try:
        import torchvision
        info['TorchVision'] = torchvision.__version__
    except Exception as e:  # noqa: BLE001 (a broken torchvision raises RuntimeError)
        info['TorchVision'] = f'not importable ({type(e).__name__}; DToP does not need it)'

    # ------------------------------------------------------------- mmcv (+ ops)
    try:
        import mmcv
        info['MMCV'] = mmcv.__version__
        check('mmcv', mmcv.__version__)
    except ImportError as e:
        info['MMCV'] = f'not importable ({e})'
        problems.append('mmcv is not installed: install mmcv (full, with ops) '
                        '>=2.0.0rc4,<2.2.0 built for your torch, e.g. with '
                        '`mim install "mmcv>=2.0.0rc4,<2.2.0"` or `bash tools/setup_env.sh`')
    else:
        try:
            from mmcv.ops import get_compiler_version, get_compiling_cuda_version
            info['MMCV ops'] = (f'compiled ({get_compiler_version()}, CUDA '
                                f'{get_compiling_cuda_version()})')
        except Exception as e:  # noqa: BLE001 (ImportError or an ABI error)
            info['MMCV ops'] = f'NOT available ({type(e).__name__}: {e})'
            problems.append('mmcv has no usable compiled ops (mmcv-lite, or built for '
                            'another torch): mmseg imports mmcv.ops. Reinstall full mmcv '
                            'built against this torch')

    # ------------------------------------------------------------- mmengine, mmseg
    for module, label in (('mmengine', 'MMEngine'), ('mmseg', 'MMSegmentation')):
        try:
            mod = importlib.import_module(module)
            info[label] = mod.__version__
            check(module, mod.__version__)
        except Exception as e:  # noqa: BLE001
            info[label] = f'not importable ({type(e).__name__}: {e})'
            problems.append(f'{module} does not import: pip install '
                            f'"{"mmsegmentation" if module == "mmseg" else module}'
                            f'{_range_text(*REQUIRED_RANGES[module])}"')
    try:
        import mmpretrain
        info['MMPretrain (optional)'] = mmpretrain.__version__
    except Exception:  # noqa: BLE001
        info['MMPretrain (optional)'] = 'not installed (not needed by DToP)'

    # ------------------------------------------------------------- dtop
    try:
        import dtop
        info['DToP'] = f'{dtop.__version__} ({dtop.__file__.rsplit("/", 2)[0]})'
    except Exception as e:  # noqa: BLE001
        info['DToP'] = f'import dtop FAILED ({type(e).__name__}: {e})'
        problems.append(f'import dtop failed: {type(e).__name__}: {e}')
        return info, problems
    import mmseg.registry as registry
    missing = []
    found = 0
    for reg_name, names in DTOP_REGISTRATIONS.items():
        reg = getattr(registry, reg_name)
        for name in names:
            if reg.get(name) is None:
                missing.append(f'{reg_name}.{name}')
            else:
                found += 1
    if missing:
        info['DToP modules registered'] = f'{found}, MISSING: {", ".join(missing)}'
        problems.append(f'DToP modules not registered in mmseg: {", ".join(missing)}; '
                        'reinstall with `pip install -e .` from the DToP checkout')
    else:
        info['DToP modules registered'] = (
            f'all {found} ({", ".join(n for ns in DTOP_REGISTRATIONS.values() for n in ns)})')
    return info, problems


def main(argv: Optional[List[str]] = None) -> int:
    """Print the report; return 1 when something DToP needs is missing."""
    parser = argparse.ArgumentParser(
        prog='python -m dtop.utils.collect_env',
        description='Versions of torch/CUDA/mmcv (and its compiled ops)/mmengine/mmseg '
        'and whether the DToP modules registered. Exit status 1 when something DToP '
        'needs is missing or out of range.')
    parser.add_argument('--json', action='store_true', help='print JSON instead of text')
    args = parser.parse_args(argv)
    info, problems = collect_env()
    if args.json:
        print(json.dumps(dict(info=info, problems=problems), indent=1))
    else:
        width = max(len(k) for k in info)
        for key, value in info.items():
            print(f'{key:<{width}} : {value}')
        if problems:
            print('\nPROBLEMS:')
            for p in problems:
                print(f'  - {p}')
        else:
            print('\nOK: DToP can run in this environment.')
    return 1 if problems else 0


if __name__ == '__main__':
    sys.exit(main())
