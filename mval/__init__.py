"""mval: logged bandit feedback (store, off-policy evaluation, MVAL logging design) and data curation."""

from mval.errors import MvalError

__all__ = ["MvalError"]
__version__ = "0.1.0"
