"""Shared test set-up: mmseg's registries with 'mmseg' as default scope."""
import os

os.environ.setdefault('OMP_NUM_THREADS', '2')

from mmseg.utils import register_all_modules  # noqa: E402

import dtop  # noqa: E402,F401  (registers DToP modules)

register_all_modules(init_default_scope=True)
