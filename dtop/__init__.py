"""DToP: Dynamic Token Pruning in plain ViTs for semantic segmentation.

Importing :mod:`dtop` registers its modules into mmsegmentation's registries
(configs load it with ``custom_imports = dict(imports=['dtop'])``).
"""
from .version import __version__
from . import models  # noqa: F401  (registers modules)
from . import datasets, engine, evaluation, visualization  # noqa: F401,E402

__all__ = ['__version__']
