"""argparse types shared by the command lines: each error names the option and what it takes."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def positive_number(option: str, unit: str, allow_zero: bool = False) -> Callable[[str], float]:
    """An argparse type for a positive (or with ``allow_zero``, non-negative) finite number of ``unit``, its errors
    naming ``option``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{option} must be a number of {unit}, got {text!r}") from None
        if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
            kind = "non-negative" if allow_zero else "positive"
            raise argparse.ArgumentTypeError(f"{option} must be a {kind} finite number, got {text!r}")
        return value

    return parse


def positive_int(option: str) -> Callable[[str], int]:
    """An argparse type for an integer >= 1, its errors naming ``option``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{option} must be a positive integer, got {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{option} must be a positive integer, got {text!r}")
        return value

    return parse
