"""diffusers' deprecation notice of a parent pipeline, shown once per process and naming the parent.

diffusers warns whenever a deprecated pipeline is built, naming the class built: for a subclass that would say the
subclass is deprecated, which it is not.
"""

from __future__ import annotations

import contextlib
import logging as std_logging
from collections.abc import Iterator

from diffusers.utils import logging

logger = logging.get_logger(__name__)

PARENT_DEPRECATION = "has been deprecated and will not receive bug fixes"
_shown: set[str] = set()


class _DropParentDeprecation(std_logging.Filter):
    dropped = False  # whether diffusers said it: the parents are deprecated only from diffusers 0.33 on

    def filter(self, record: std_logging.LogRecord) -> bool:
        if PARENT_DEPRECATION in record.getMessage():
            self.dropped = True
            return False
        return True


@contextlib.contextmanager
def parent_deprecation_once(parent: type, child_name: str) -> Iterator[None]:
    """Within the block diffusers' own deprecation message is dropped; after it, if diffusers said one, the parent's
    deprecation is said once per process, naming the parent and its last supported diffusers version."""
    parent_logger = logging.get_logger("diffusers.pipelines.pipeline_utils")
    drop = _DropParentDeprecation()
    parent_logger.addFilter(drop)
    try:
        yield
    finally:
        parent_logger.removeFilter(drop)
    if drop.dropped and parent.__name__ not in _shown:
        _shown.add(parent.__name__)
        logger.warning(
            "diffusers' %s, which %s subclasses, %s after diffusers %s; audioldm_tiled's tests guard the parts it "
            "relies on.", parent.__name__, child_name, PARENT_DEPRECATION,
            getattr(parent, "_last_supported_version", "its deprecation"),
        )
