"""The exception for a mistake a user can fix, below every check that raises it."""

from __future__ import annotations


class UserError(ValueError):
    """Something the user can fix: the message is one sentence naming the key or file and what would
    be valid. Whatever a library's message it quotes, it stays on one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))
