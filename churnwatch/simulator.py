"""(being written)"""

from __future__ import annotations


def register(sub, common):  # noqa: ANN001, D103
    pass
