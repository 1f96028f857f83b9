"""The eval stage's error: a problem with settings, suites or reports, reported as one line."""


class EvalError(ValueError):
    """An eval problem reported as one line."""
