"""Continuous encodings of prompt spaces: the unit box the optimizers search.

Every strategy searches a unit box ``[0, 1]^dim`` and hands its points to a
:class:`PromptBox`, which turns them into the engine's candidate encoding and back:

- :class:`HardPromptBox`: ``L`` positions of ``d`` PCA coordinates each (``dim = L * d``).
  The vocabulary is restricted by the space's filter, projected on its top ``d`` principal
  components and scaled per coordinate to ``[0, 1]`` with the min/max of the projected
  (restricted) table. A box point becomes a prompt by taking, per position, the nearest
  token of the restricted vocabulary; candidates are `n x L` LongTensors of rows of the
  WHOLE uploaded table.
- :class:`SoftPromptBox`: ``z`` in ``[-b, b]^k`` mapped to the flat `L * D` prompt vector
  by a fixed random matrix ``A`` (`L*D x k`, seeded by the study seed, entries
  ``N(0, (s / sqrt(k))^2)`` as in black-box tuning); with ``k = 0`` the box is the vector
  itself, ``[-b, b]^(L*D)``. Candidates are `n x (L*D)` float32 tensors.

Both are deterministic functions of (space, embeddings, seed).
"""

from __future__ import annotations

import abc
import math

import numpy as np
import torch
from torch import Tensor

from promptbo.errors import InvalidArgumentError
from promptbo.server.domain import HardPromptSpace, SearchSpace, SoftPromptSpace

#: Elements of one block of the query-by-table distance matrix (bounds peak memory).
_BLOCK_ELEMENTS = 1 << 22
#: Alternatives per position considered when a projected prompt is a duplicate.
_NEIGHBORS = 8


def derive_seed(*parts: int) -> int:
    """A 63-bit seed mixing ``parts`` (study seed, counters, a tag)."""
    state = np.random.SeedSequence([int(p) & 0xFFFFFFFFFFFF for p in parts]).generate_state(2)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


class PromptBox(abc.ABC):
    """Maps the engine's candidate encoding to unit-box points and back."""

    #: Dimension of the unit box.
    dim: int
    #: True for hard prompts (discrete candidates that must not repeat).
    discrete: bool

    @abc.abstractmethod
    def to_unit(self, candidates: Tensor) -> Tensor:
        """Box coordinates (`n x dim` float64) of encoded candidates."""

    @abc.abstractmethod
    def project(
        self, u: Tensor, avoid: set[bytes], generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """Candidates for the box points ``u`` (`m x dim`).

        Returns ``(candidates, u_projected)``: the encoded candidates and the box points
        they actually occupy (for hard prompts, the coordinates of the chosen tokens). Hard
        prompts whose key is in ``avoid`` are replaced by the nearest unused alternative;
        the keys of the returned candidates are added to ``avoid``.
        """

    @abc.abstractmethod
    def random(self, n: int, avoid: set[bytes], generator: torch.Generator) -> Tensor:
        """``n`` uniformly random candidates (hard: uniform rows of the filtered vocabulary),
        avoiding the keys in ``avoid`` (which is updated)."""

    @abc.abstractmethod
    def perturb(self, u: Tensor, generator: torch.Generator) -> Tensor:
        """Local variations of box points (`m x dim` -> `m x dim`): hard prompts swap one
        position to a random allowed token; soft prompts move a few coordinates."""

    def keys(self, candidates: Tensor) -> list[bytes]:
        """Hashable identities of encoded candidates."""
        arr = candidates.detach().cpu().numpy()
        return [row.tobytes() for row in arr]


class HardPromptBox(PromptBox):
    """Hard prompts in the scaled PCA space of a (filtered) embedding table.

    Args:
        space: the hard prompt space (length, PCA dims, filter).
        embeddings: the whole uploaded `V x D` table.
    """

    discrete = True

    def __init__(self, space: HardPromptSpace, embeddings: np.ndarray) -> None:
        table = np.asarray(embeddings)
        if table.ndim != 2 or table.shape[0] == 0:
            raise InvalidArgumentError(
                f"embeddings must be a non-empty V x D table, got shape {table.shape}"
            )
        self.space = space
        self.length = space.prompt_length
        self.vocab_size = int(table.shape[0])
        self.rows = filtered_rows(space, self.vocab_size)
        table = np.ascontiguousarray(table, dtype=np.float32)
        if not table.flags.writeable:  # e.g. a view of a received buffer: own a copy
            table = table.copy()
        self.table = torch.from_numpy(table)
        restricted = self.table[self.rows].double()
        self.mean = restricted.mean(0)
        self.components = principal_components(restricted - self.mean, space.pca_dims)
        self.pca_dims = int(self.components.shape[1])
        projected = (restricted - self.mean) @ self.components
        self.low = projected.min(0).values
        span = projected.max(0).values - self.low
        self.span = torch.where(span > 1e-12, span, torch.ones_like(span))
        #: `V' x d` box coordinates of the allowed tokens.
        self.coords = ((projected - self.low) / self.span).clamp(0.0, 1.0)
        self._sq_norms = self.coords.pow(2).sum(-1)
        self._position_of = torch.full((self.vocab_size,), -1, dtype=torch.long)
        self._position_of[self.rows] = torch.arange(len(self.rows))
        self.dim = self.length * self.pca_dims
        self.num_prompts = len(self.rows) ** self.length  # Python int: exact

    # --- coordinates ------------------------------------------------------------------
    def row_coords(self, rows: Tensor) -> Tensor:
        """Box coordinates (`... x d`, float64) of whole-table rows (filtered or not)."""
        rows = rows.long()
        pos = self._position_of[rows]
        out = torch.empty(*rows.shape, self.pca_dims, dtype=torch.float64)
        inside = pos >= 0
        out[inside] = self.coords[pos[inside]]
        if (~inside).any():
            emb = self.table[rows[~inside]].double()
            out[~inside] = (((emb - self.mean) @ self.components - self.low) / self.span).clamp(
                0.0, 1.0
            )
        return out

    def to_unit(self, candidates: Tensor) -> Tensor:
        self._check(candidates)
        return self.row_coords(candidates).reshape(candidates.shape[0], self.dim)

    def _check(self, candidates: Tensor) -> None:
        if candidates.ndim != 2 or candidates.shape[1] != self.length:
            raise InvalidArgumentError(
                f"hard-prompt candidates must be n x {self.length} rows, "
                f"got {tuple(candidates.shape)}"
            )
        if candidates.dtype.is_floating_point:
            raise InvalidArgumentError("hard-prompt candidates must be integer vocabulary rows")
        if candidates.numel() and (candidates.min() < 0 or candidates.max() >= self.vocab_size):
            raise InvalidArgumentError(
                f"hard-prompt rows must be in [0, {self.vocab_size}), the vocabulary's size"
            )

    # --- nearest tokens ---------------------------------------------------------------
    def nearest(self, points: Tensor, k: int = 1) -> tuple[Tensor, Tensor]:
        """The ``k`` nearest allowed tokens of each point.

        Args:
            points: `m x d` box coordinates of single positions.
        Returns:
            ``(positions, sq_dists)``, both `m x k`: indices into :attr:`rows` and squared
            distances, nearest first (exact: a blocked `|q|^2 - 2 q.t + |t|^2` in float64).
        """
        points = points.double().reshape(-1, self.pca_dims)
        k = min(k, len(self.rows))
        block = max(1, _BLOCK_ELEMENTS // len(self.rows))
        idx_parts, dist_parts = [], []
        for start in range(0, points.shape[0], block):
            q = points[start : start + block]
            d2 = q.pow(2).sum(-1, keepdim=True) - 2.0 * q @ self.coords.T + self._sq_norms
            dist, idx = torch.topk(d2, k, dim=-1, largest=False, sorted=True)
            idx_parts.append(idx)
            dist_parts.append(dist.clamp_min(0.0))
        if not idx_parts:
            empty = torch.empty(0, k)
            return empty.long(), empty.double()
        return torch.cat(idx_parts), torch.cat(dist_parts)

    def project(
        self, u: Tensor, avoid: set[bytes], generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        m = u.shape[0]
        if m == 0:
            return torch.empty(0, self.length, dtype=torch.long), u.new_empty(0, self.dim)
        pos, dist = self.nearest(u.reshape(m * self.length, self.pca_dims), _NEIGHBORS)
        pos = pos.reshape(m, self.length, -1)
        dist = dist.reshape(m, self.length, -1)
        out = torch.empty(m, self.length, dtype=torch.long)
        for i in range(m):
            choice = pos[i, :, 0].clone()
            key = self.rows[choice].numpy().tobytes()
            if key in avoid and not self.exhausted(avoid):
                choice = self._alternative(pos[i], dist[i], avoid, generator)
            out[i] = self.rows[choice]
            avoid.add(out[i].numpy().tobytes())
        return out, self.to_unit(out)

    def _alternative(
        self, pos: Tensor, dist: Tensor, avoid: set[bytes], generator: torch.Generator
    ) -> Tensor:
        """The cheapest unused prompt among single- and double-position swaps to nearby
        tokens (`L x k` neighbor lists), else random positions resampled."""
        base = pos[:, 0]
        extra = (dist - dist[:, :1]).flatten()  # cost of swapping position j to neighbor r
        order = torch.argsort(extra, stable=True).tolist()
        k = pos.shape[1]
        swaps = [(o // k, o % k) for o in order if o % k]
        for j, r in swaps:
            cand = base.clone()
            cand[j] = pos[j, r]
            if self.rows[cand].numpy().tobytes() not in avoid:
                return cand
        for a in range(len(swaps)):
            for b in range(a + 1, min(len(swaps), a + 8)):
                (j1, r1), (j2, r2) = swaps[a], swaps[b]
                if j1 == j2:
                    continue
                cand = base.clone()
                cand[j1], cand[j2] = pos[j1, r1], pos[j2, r2]
                if self.rows[cand].numpy().tobytes() not in avoid:
                    return cand
        for _ in range(1000):
            cand = base.clone()
            j = int(torch.randint(self.length, (1,), generator=generator))
            cand[j] = int(torch.randint(len(self.rows), (1,), generator=generator))
            if self.rows[cand].numpy().tobytes() not in avoid:
                return cand
            base = cand
        return base

    def perturb(self, u: Tensor, generator: torch.Generator) -> Tensor:
        m = u.shape[0]
        out = u.double().clone().reshape(m, self.length, self.pca_dims)
        where = torch.randint(self.length, (m,), generator=generator)
        tokens = torch.randint(len(self.rows), (m,), generator=generator)
        out[torch.arange(m), where] = self.coords[tokens]
        return out.reshape(m, self.dim)

    def random(self, n: int, avoid: set[bytes], generator: torch.Generator) -> Tensor:
        out = torch.empty(n, self.length, dtype=torch.long)
        for i in range(n):
            for _ in range(1000):
                pos = torch.randint(len(self.rows), (self.length,), generator=generator)
                key = self.rows[pos].numpy().tobytes()
                if key not in avoid or self.exhausted(avoid):
                    break
            out[i] = self.rows[pos]
            avoid.add(out[i].numpy().tobytes())
        return out

    def exhausted(self, avoid: set[bytes]) -> bool:
        """True when every prompt of the space is in ``avoid`` (repeats are then allowed)."""
        return len(avoid) >= self.num_prompts


class SoftPromptBox(PromptBox):
    """Soft prompts through a fixed random projection (or the raw vector when ``k = 0``).

    Args:
        space: the soft prompt space.
        seed: the study seed (fixes the projection matrix).
    """

    discrete = False

    def __init__(self, space: SoftPromptSpace, seed: int) -> None:
        self.space = space
        self.size = space.size
        self.bound = float(space.bound)
        self.intrinsic_dim = space.intrinsic_dim
        self.dim = space.intrinsic_dim or space.size
        self.matrix: Tensor | None = None
        self._pinv: Tensor | None = None
        if self.intrinsic_dim:
            g = torch.Generator().manual_seed(derive_seed(seed, 0x50F7))
            std = space.embedding_std / math.sqrt(self.intrinsic_dim)
            self.matrix = torch.randn(self.size, self.intrinsic_dim, generator=g) * std
        self._unit_of: dict[bytes, Tensor] = {}

    def z_of_unit(self, u: Tensor) -> Tensor:
        return self.bound * (2.0 * u - 1.0)

    def vectors(self, u: Tensor) -> Tensor:
        """Flat prompt vectors (`m x L*D`, float32) of box points ``u`` (`m x dim`)."""
        z = self.z_of_unit(u.double()).float()
        if self.matrix is None:
            return z
        return z @ self.matrix.T

    def to_unit(self, candidates: Tensor) -> Tensor:
        if candidates.ndim != 2 or candidates.shape[1] != self.size:
            raise InvalidArgumentError(
                f"soft-prompt candidates must be n x {self.size} (prompt_length x "
                f"embedding_dim), got {tuple(candidates.shape)}"
            )
        vec = candidates.detach().float()
        if self.matrix is None:
            return ((vec.double() / self.bound + 1.0) / 2.0).clamp(0.0, 1.0)
        out = torch.empty(vec.shape[0], self.dim, dtype=torch.float64)
        unknown = []
        for i, key in enumerate(self.keys(vec)):
            known = self._unit_of.get(key)
            if known is None:
                unknown.append(i)
            else:
                out[i] = known
        if unknown:
            if self._pinv is None:
                self._pinv = torch.linalg.pinv(self.matrix.double())
            z = vec[unknown].double() @ self._pinv.T
            out[unknown] = ((z / self.bound + 1.0) / 2.0).clamp(0.0, 1.0)
        return out

    def project(
        self, u: Tensor, avoid: set[bytes], generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        u = u.double().clamp(0.0, 1.0)
        vec = self.vectors(u)
        if self.matrix is not None:
            for key, row in zip(self.keys(vec), u, strict=True):
                self._unit_of[key] = row.clone()
        return vec, u

    def perturb(self, u: Tensor, generator: torch.Generator) -> Tensor:
        m = u.shape[0]
        prob = min(1.0, 20.0 / self.dim)
        mask = torch.rand(m, self.dim, generator=generator) < prob
        mask[torch.arange(m), torch.randint(self.dim, (m,), generator=generator)] = True
        noise = 0.1 * torch.randn(m, self.dim, generator=generator, dtype=torch.float64)
        return (u.double() + mask * noise).clamp(0.0, 1.0)

    def random(self, n: int, avoid: set[bytes], generator: torch.Generator) -> Tensor:
        u = torch.rand(n, self.dim, generator=generator, dtype=torch.float64)
        return self.project(u, avoid, generator)[0]


def filtered_rows(space: HardPromptSpace, vocab_size: int) -> Tensor:
    """Whole-table rows the space allows (LongTensor): the ``top_n`` highest-scoring rows
    (best first, ties by row), exactly the ``allowed`` rows (ascending), or all rows."""
    if space.allowed:
        rows = sorted(set(space.allowed))
        if rows[0] < 0 or rows[-1] >= vocab_size:
            raise InvalidArgumentError(
                f"allowed rows must be in [0, {vocab_size}), got {rows[0]}..{rows[-1]}"
            )
        return torch.tensor(rows, dtype=torch.long)
    if space.top_n:
        if len(space.top_n_scores) != vocab_size:
            raise InvalidArgumentError(
                f"the top_n filter has {len(space.top_n_scores)} scores for {vocab_size} "
                "vocabulary entries; give one score per entry"
            )
        scores = np.asarray(space.top_n_scores, dtype=np.float64)
        order = np.argsort(-scores, kind="stable")[: space.top_n]
        return torch.from_numpy(order.astype(np.int64))
    return torch.arange(vocab_size)


def principal_components(centered: Tensor, dims: int) -> Tensor:
    """The top ``dims`` principal directions (`D x d'`, ``d' = min(dims, D)``) of a centered
    `n x D` float64 table, each signed so that its largest-magnitude entry is positive
    (deterministic: a symmetric eigendecomposition of the `D x D` scatter matrix)."""
    width = centered.shape[1]
    dims = min(dims, width)
    scatter = centered.T @ centered
    _, vecs = torch.linalg.eigh(scatter)
    comps = vecs.flip(-1)[:, :dims]
    pivot = comps.abs().argmax(0)
    signs = torch.sign(comps[pivot, torch.arange(dims)])
    return comps * torch.where(signs == 0, torch.ones_like(signs), signs)


def make_box(space: SearchSpace, embeddings: np.ndarray | None, seed: int) -> PromptBox:
    """The box encoding of ``space``."""
    if isinstance(space, HardPromptSpace):
        if embeddings is None:
            raise InvalidArgumentError("a hard-prompt engine needs the vocabulary's embeddings")
        return HardPromptBox(space, embeddings)
    if isinstance(space, SoftPromptSpace):
        return SoftPromptBox(space, seed)
    raise InvalidArgumentError(f"unsupported search space {type(space).__name__}")
