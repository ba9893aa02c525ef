"""Assembling an UploadPool stream into a :class:`~promptbo.server.domain.Pool`.

The first chunk carries the header (``size``, ``embedding_dim``, ``embedding_model``,
``expected_id``); every chunk may carry texts and float32 embedding rows, in order. The
assembled pool is checked against the header before the manager hashes and stores it.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from promptbo.errors import InvalidArgumentError
from promptbo.server.domain import Pool

MAX_POOL_SIZE = 1_000_000
MAX_POOL_BYTES = 2 * 1024**3
MAX_POOL_TEXT_BYTES = 64 * 1024


def assemble_pool(chunks: Iterable) -> tuple[Pool, str]:
    """Joins the chunks of an UploadPool stream; returns the pool and the client's
    expected id. Raises InvalidArgumentError for inconsistent chunks."""
    size = dim = 0
    expected = model = ""
    texts: list[str] = []
    parts: list[bytes] = []
    nbytes = 0
    for i, chunk in enumerate(chunks):
        if i == 0:
            size, dim = chunk.size, chunk.embedding_dim
            expected, model = chunk.expected_id, chunk.embedding_model
            if not (1 <= size <= MAX_POOL_SIZE) or not (1 <= dim <= 65536):
                raise InvalidArgumentError(
                    f"the first chunk must give size in [1, {MAX_POOL_SIZE}] and "
                    f"embedding_dim in [1, 65536]; got size={size}, embedding_dim={dim}"
                )
            if size * dim * 4 > MAX_POOL_BYTES:
                raise InvalidArgumentError("the pool's embedding table is larger than 2 GiB")
        elif (chunk.size and chunk.size != size) or (
            chunk.embedding_dim and chunk.embedding_dim != dim
        ):
            raise InvalidArgumentError(f"chunk {i} changes size or embedding_dim mid-upload")
        for text in chunk.texts:
            if not text.strip():
                raise InvalidArgumentError(
                    f"pool text {len(texts)} is empty; every candidate needs some text"
                )
            if len(text.encode("utf-8")) > MAX_POOL_TEXT_BYTES:
                raise InvalidArgumentError(
                    f"pool text {len(texts)} is longer than {MAX_POOL_TEXT_BYTES} bytes"
                )
            texts.append(text)
        parts.append(chunk.embeddings)
        nbytes += len(chunk.embeddings)
        if len(texts) > size or nbytes > size * dim * 4:
            raise InvalidArgumentError(
                f"chunk {i} carries more data than the declared size={size} x dim={dim}"
            )
    if size == 0:
        raise InvalidArgumentError("the upload stream was empty")
    if len(texts) != size or nbytes != size * dim * 4:
        raise InvalidArgumentError(
            f"got {len(texts)} texts and {nbytes} bytes of embeddings; the header declared "
            f"size={size} texts and size x dim x 4 = {size * dim * 4} bytes"
        )
    emb = np.frombuffer(b"".join(parts), dtype="<f4").reshape(size, dim)
    return Pool(tuple(texts), emb, model), expected
