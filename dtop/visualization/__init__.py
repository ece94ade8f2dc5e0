"""Token exit maps and the DToP segmentation visualizer."""
from .exit_map import (DEFAULT_STAGE_COLORS, colorize_exit_map, exit_fractions,
                       exit_map_to_original, render_exit_map, stage_colors,
                       stage_legend)
from .visualizer import DToPVisualizer

__all__ = ['DToPVisualizer', 'DEFAULT_STAGE_COLORS', 'stage_colors', 'colorize_exit_map',
           'render_exit_map', 'exit_map_to_original', 'exit_fractions', 'stage_legend']
