"""Lightning's ModelCheckpoint, minus a cost that dominates tiny models.

Lightning formats every callback's `state_key` on every hook call (a dozen a step), and
ModelCheckpoint's is a repr of its settings. Those never change after construction, so it is
computed once. Everything else, the key's value included, is Lightning's.
"""

from __future__ import annotations

import functools

from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint


class ModelCheckpoint(LightningModelCheckpoint):
    @functools.cached_property
    def state_key(self) -> str:
        return super().state_key
