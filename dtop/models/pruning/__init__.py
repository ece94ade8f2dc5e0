from .rule import class_presence, select_exits, select_exits_packed, token_scores

__all__ = ['class_presence', 'select_exits', 'select_exits_packed', 'token_scores']
