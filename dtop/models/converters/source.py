"""Reading the tensors of a foreign checkpoint: a file (``.pth`` / ``.bin`` /
``.safetensors``) or a transformers ``save_pretrained`` folder (sharded or not),
unwrapped from training-checkpoint containers. Shared by the converter tools
(``tools/model_converters/dinov2_to_dtop.py``, ``eomt_to_dtop.py``)."""
import errno
import json
import os.path as osp
from typing import Dict

from .dinov2 import ConversionError, MissingPackageError

#: wrappers of a state dict inside a training checkpoint, looked up in this order
WRAPPER_KEYS = ('state_dict', 'model', 'teacher', 'state_dict_ema', 'model_ema', 'module')
#: files of a transformers ``save_pretrained`` folder, in order of preference
HF_FILES = ('model.safetensors', 'model.safetensors.index.json', 'pytorch_model.bin')


def _read_safetensors(path: str) -> Dict:
    try:
        from safetensors.torch import load_file
    except ImportError as e:
        raise MissingPackageError(f'{path} is a .safetensors file: `pip install safetensors` '
                                  'to read it') from e
    return load_file(path, device='cpu')


def read_source(src: str, trust: bool = False) -> Dict:
    """The tensors of ``src`` (file or transformers folder), unwrapped.

    Args:
        src (str): checkpoint file or ``save_pretrained`` folder.
        trust (bool): full unpickling of torch files (only for trusted files).

    Returns:
        dict: ``{name: tensor}``, a common ``module.`` prefix removed.
    """
    from dtop.utils.checkpoint import check_finite_weights, read_checkpoint
    if osp.isdir(src):
        found = [f for f in HF_FILES if osp.isfile(osp.join(src, f))]
        if not found:
            raise ConversionError(f'{src} is a folder without any of {list(HF_FILES)} '
                                  '(not a transformers save_pretrained folder)')
        src = osp.join(src, found[0])
    elif not osp.exists(src):
        raise FileNotFoundError(errno.ENOENT, 'no such checkpoint file or folder', src)
    if src.endswith('.index.json'):
        with open(src) as f:
            shards = sorted(set(json.load(f)['weight_map'].values()))
        raw = {}
        for shard in shards:
            raw.update(_read_safetensors(osp.join(osp.dirname(src), shard)))
    elif src.endswith('.safetensors'):
        raw = _read_safetensors(src)
    else:  # safe loader, one-line errors for missing / truncated / garbage files
        raw = read_checkpoint(src, trust=trust or None, check_finite=False)
    sd = next((raw[k] for k in WRAPPER_KEYS if isinstance(raw.get(k), dict)), raw)
    sd = {k: v for k, v in sd.items() if hasattr(v, 'shape')}
    if not sd:
        raise ConversionError(f'{src} holds no tensors (looked at the top level and under '
                              f'{list(WRAPPER_KEYS)})')
    if all(k.startswith('module.') for k in sd):
        sd = {k[len('module.'):]: v for k, v in sd.items()}
    check_finite_weights(sd, src)
    return sd
