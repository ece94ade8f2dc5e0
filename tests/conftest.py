"""Shared test set-up: the repository root on ``sys.path`` (for ``tests.utils``) and
mmseg's registries with 'mmseg' as default scope."""
import os
import sys

os.environ.setdefault('OMP_NUM_THREADS', '2')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)  # `from tests.utils.tiny_models import ...` from any cwd

from mmseg.utils import register_all_modules  # noqa: E402

import dtop  # noqa: E402,F401  (registers DToP modules)

register_all_modules(init_default_scope=True)
