"""argparse value types shared by the command-line tools (clear messages, exit code 2)."""
import argparse
import math

__all__ = ["int_at_least", "positive_int", "nonneg_int", "positive_float"]


def int_at_least(low):
    """An argparse ``type`` accepting integers >= ``low``."""
    def parse(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {v}")
        return v
    return parse


positive_int = int_at_least(1)
nonneg_int = int_at_least(0)


def positive_float(text):
    """An argparse ``type`` accepting finite numbers > 0."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return v
