"""DToP test suite (a package so that ``tests.utils`` resolves to these helpers)."""
