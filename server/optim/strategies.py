"""Built-in strategies (importing this module registers them).

Placeholder random strategy until the full set lands; see :mod:`promptbo.server.optim`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from promptbo.server.domain import HardPromptSpace
from promptbo.server.optim.base import Engine, register_strategy


@register_strategy("random")
class RandomEngine(Engine):
    def __init__(self, space, options, seed, embeddings) -> None:
        self.space = space
        self.seed = seed
        self.num_suggested = 0
        self.vocab_size = None if embeddings is None else int(embeddings.shape[0])

    def suggest(self, n: int, pending: Tensor | None = None) -> Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.num_suggested)
        self.num_suggested += n
        if isinstance(self.space, HardPromptSpace):
            return torch.randint(0, self.vocab_size, (n, self.space.prompt_length), generator=g)
        size = self.space.prompt_length * self.space.embedding_dim
        return (torch.rand(n, size, generator=g) * 2 - 1) * self.space.bound

    def observe(self, candidates: Tensor, values: Tensor) -> None:
        pass


register_strategy("gp")(RandomEngine)
