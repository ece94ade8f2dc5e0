from .rule import class_presence, compact, select_exits, token_scores

__all__ = ['class_presence', 'compact', 'select_exits', 'token_scores']
