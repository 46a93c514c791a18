"""Where the configs live, and the checks that turn a bad value into one sentence naming its key."""

from __future__ import annotations

import math
from pathlib import Path

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


class UserError(ValueError):
    """Something the user can fix: the message is one sentence naming the key or file and what would be valid."""


def check_batch_size(key: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise UserError(f"{key} must be a positive integer or null (the whole split as one batch), got {value!r}.")


def check_fraction(key: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise UserError(f"{key} must be a number strictly between 0 and 1, got {value!r}.")


def check_positive(key: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
        raise UserError(f"{key} must be a positive number, got {value!r}.")
