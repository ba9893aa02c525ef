"""Assembling an UploadPool stream into a :class:`~promptbo.server.domain.Pool`, checked
chunk by chunk.

The first chunk carries the header (``size``, ``embedding_dim``, ``embedding_model``,
``expected_id``); every chunk may carry texts and float32 embedding rows, in order.
:class:`PoolUpload` refuses, at the first chunk that breaks it, a stream that carries more
than the header declared or changes it midway, so the server never holds more than the
declared pool plus one message (as :mod:`~promptbo.server.upload` does for vocabularies).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from promptbo.errors import InvalidArgumentError
from promptbo.server.domain import Pool
from promptbo.server.wire import MalformedRequest

MAX_POOL_SIZE = 1_000_000
MAX_POOL_BYTES = 2 * 1024**3
MAX_POOL_TEXT_BYTES = 64 * 1024
MAX_EMBEDDING_DIM = 65536


class PoolUpload:
    """The chunks of one pool upload received so far (see module doc)."""

    def __init__(self) -> None:
        self.size = self.dim = 0
        self.expected = self.model = ""
        self.texts: list[str] = []
        self.parts: list[bytes] = []
        self.nbytes = 0
        self.count = 0

    def add(self, chunk) -> None:
        """Takes one ``UploadPoolRequest``. Raises InvalidArgumentError as soon as the
        stream breaks its declaration."""
        i = self.count
        if isinstance(chunk, MalformedRequest):
            raise InvalidArgumentError(f"chunk {i}: {chunk.details}")
        if i == 0:
            size, dim = chunk.size, chunk.embedding_dim
            if not (1 <= size <= MAX_POOL_SIZE) or not (1 <= dim <= MAX_EMBEDDING_DIM):
                raise InvalidArgumentError(
                    f"the first chunk must give size in [1, {MAX_POOL_SIZE}] and "
                    f"embedding_dim in [1, {MAX_EMBEDDING_DIM}]; got size={size}, "
                    f"embedding_dim={dim}"
                )
            if size * dim * 4 > MAX_POOL_BYTES:
                raise InvalidArgumentError("the pool's embedding table is larger than 2 GiB")
            self.size, self.dim = size, dim
            self.expected, self.model = chunk.expected_id, chunk.embedding_model
        elif (chunk.size and chunk.size != self.size) or (
            chunk.embedding_dim and chunk.embedding_dim != self.dim
        ):
            raise InvalidArgumentError(f"chunk {i} changes size or embedding_dim mid-upload")
        nbytes = self.nbytes + len(chunk.embeddings)
        if len(self.texts) + len(chunk.texts) > self.size or nbytes > self.size * self.dim * 4:
            raise InvalidArgumentError(
                f"chunk {i} carries more data than the declared size={self.size} x "
                f"dim={self.dim}"
            )
        for text in chunk.texts:
            n = len(self.texts)
            if not text.strip():
                raise InvalidArgumentError(
                    f"pool text {n} is empty; every candidate needs some text"
                )
            if len(text.encode("utf-8")) > MAX_POOL_TEXT_BYTES:
                raise InvalidArgumentError(
                    f"pool text {n} is longer than {MAX_POOL_TEXT_BYTES} bytes"
                )
            self.texts.append(text)
        self.parts.append(chunk.embeddings)
        self.nbytes = nbytes
        self.count += 1

    def finish(self) -> tuple[Pool, str]:
        """The pool and the client's expected id, once every chunk is in. Raises
        InvalidArgumentError for an empty or incomplete stream."""
        if self.count == 0:
            raise InvalidArgumentError("the upload stream was empty")
        want = self.size * self.dim * 4
        if len(self.texts) != self.size or self.nbytes != want:
            raise InvalidArgumentError(
                f"got {len(self.texts)} texts and {self.nbytes} bytes of embeddings; the "
                f"header declared size={self.size} texts and size x dim x 4 = {want} bytes"
            )
        emb = np.frombuffer(b"".join(self.parts), dtype="<f4").reshape(self.size, self.dim)
        self.parts = []
        return Pool(tuple(self.texts), emb, self.model), self.expected


def assemble_pool(chunks: Iterable) -> tuple[Pool, str]:
    """Joins the chunks of a whole UploadPool stream (see :class:`PoolUpload`)."""
    upload = PoolUpload()
    for chunk in chunks:
        upload.add(chunk)
    return upload.finish()
