"""Rankings of a vocabulary's whole-word tokens, for a hard-prompt space's ``top_n`` filter.

A :class:`~promptbo.spec.HardPromptSpace` with ``top_n=N`` searches only the ``N``
tokens with the highest ``top_n_scores`` (one score per vocabulary row). Two rankings:

- :func:`word_scores`: whole English words (``" great"``) by BPE merge order, which
  approximates their frequency in the tokenizer's training corpus. Needs nothing but the
  vocabulary.
- :func:`text_word_scores`: whole words by how often they occur in the task's own texts
  (the training pool, never the test split), so the candidates are the words of the
  domain (``" film"``, ``" funny"``, ``" boring"`` for movie reviews), and the prompts a
  search finds read as words. On SST-2 random prompts drawn from such a list vary more in
  quality than those from the merge-order list (``docs/benchmarks.md``).

Both give non-words (sub-words, punctuation, special tokens) the lowest score, so they are
chosen only when ``N`` exceeds the number of words.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

#: A whole-word token: a leading space and two or more ASCII letters (`" great"`).
WORD_TOKEN = re.compile(r"^ [A-Za-z]{2,}$")
_WORD_IN_TEXT = re.compile(r"[A-Za-z]{2,}")
#: Score of a token that is not a whole word.
NOT_A_WORD = -1e12


def _is_word(tokens: Sequence[str]) -> np.ndarray:
    return np.fromiter((bool(WORD_TOKEN.match(t)) for t in tokens), dtype=bool,
                       count=len(tokens))


def word_scores(tokens: Sequence[str], token_ids: Sequence[int]) -> np.ndarray:
    """Scores (``V``, float64) that rank whole-word tokens by BPE merge order (a lower id
    ranks higher); every other token scores :data:`NOT_A_WORD`."""
    ids = np.asarray(token_ids, dtype=np.float64)
    return np.where(_is_word(tokens), -ids, NOT_A_WORD)


def text_word_scores(tokens: Sequence[str], texts: Iterable[str]) -> np.ndarray:
    """Scores (``V``, float64) that rank whole-word tokens by how often their word occurs
    in ``texts`` (case-sensitive, whole words only).

    A word token whose word never occurs scores 0 and a non-word :data:`NOT_A_WORD`, so a
    ``top_n`` larger than the number of words found falls back to unseen words (by row
    order: the space's filter breaks ties by row).
    """
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(_WORD_IN_TEXT.findall(text))
    scores = np.fromiter((counts.get(t[1:], 0) for t in tokens), dtype=np.float64,
                         count=len(tokens))
    return np.where(_is_word(tokens), scores, NOT_A_WORD)


def read_texts(path: str | Path) -> list[str]:
    """The texts of a data file: every string field of each JSON object in a ``.jsonl``
    file (``text``, ``premise``, ... ; labels given as strings count too, harmlessly), or
    every non-empty line of any other file.

    Raises:
        ValueError: a ``.jsonl`` line is not a JSON object (the message names the line).
    """
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    if path.suffix != ".jsonl":
        return [line for line in lines if line.strip()]
    texts: list[str] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{n}: not JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
        texts += [v for v in row.values() if isinstance(v, str)]
    return texts
