"""Assembling an UploadVocabulary stream, checked chunk by chunk.

:class:`VocabularyUpload` takes the chunks as they arrive and refuses, at the first chunk
that breaks it, any stream that carries more than its first chunk declared
(``size x embedding_dim`` float32 values, ``size`` tokens and ids) or changes the
declaration midway. The server therefore never holds more than the declared table (at
most :data:`MAX_VOCABULARY_BYTES`) plus one message, whatever a client sends.
"""

from __future__ import annotations

import numpy as np

from promptbo.errors import InvalidArgumentError
from promptbo.server.domain import Vocabulary
from promptbo.server.wire import MalformedRequest

MAX_VOCABULARY_SIZE = 1_000_000
MAX_VOCABULARY_BYTES = 2 * 1024**3
MAX_EMBEDDING_DIM = 65536


class VocabularyUpload:
    """The chunks of one upload received so far (see module doc)."""

    def __init__(self) -> None:
        self.size = self.dim = 0
        self.expected = ""
        self.tokens: list[str] = []
        self.ids: list[int] = []
        self.parts: list[bytes] = []
        self.nbytes = 0
        self.count = 0

    def add(self, chunk) -> None:
        """Takes one ``UploadVocabularyRequest``. Raises InvalidArgumentError as soon as
        the stream breaks its declaration."""
        i = self.count
        if isinstance(chunk, MalformedRequest):
            raise InvalidArgumentError(f"chunk {i}: {chunk.details}")
        if i == 0:
            size, dim = chunk.size, chunk.embedding_dim
            if not (1 <= size <= MAX_VOCABULARY_SIZE) or not (1 <= dim <= MAX_EMBEDDING_DIM):
                raise InvalidArgumentError(
                    f"the first chunk must give size in [1, {MAX_VOCABULARY_SIZE}] and "
                    f"embedding_dim in [1, {MAX_EMBEDDING_DIM}]; got size={size}, "
                    f"embedding_dim={dim}"
                )
            if size * dim * 4 > MAX_VOCABULARY_BYTES:
                raise InvalidArgumentError("the embedding table is larger than 2 GiB")
            self.size, self.dim, self.expected = size, dim, chunk.expected_id
        elif (chunk.size and chunk.size != self.size) or (
            chunk.embedding_dim and chunk.embedding_dim != self.dim
        ):
            raise InvalidArgumentError(f"chunk {i} changes size or embedding_dim mid-upload")
        nbytes = self.nbytes + len(chunk.embeddings)
        if (
            len(self.tokens) + len(chunk.tokens) > self.size
            or len(self.ids) + len(chunk.token_ids) > self.size
            or nbytes > self.size * self.dim * 4
        ):
            raise InvalidArgumentError(
                f"chunk {i} carries more data than the declared size={self.size} x "
                f"dim={self.dim}"
            )
        self.tokens.extend(chunk.tokens)
        self.ids.extend(chunk.token_ids)
        self.parts.append(chunk.embeddings)
        self.nbytes = nbytes
        self.count += 1

    def finish(self) -> tuple[Vocabulary, str]:
        """The vocabulary and the client's expected id, once every chunk is in.
        Raises InvalidArgumentError for an empty or incomplete stream."""
        if self.count == 0:
            raise InvalidArgumentError("the upload stream was empty")
        want = self.size * self.dim * 4
        if self.nbytes != want:
            raise InvalidArgumentError(
                f"got {self.nbytes} bytes of embeddings, expected size x dim x 4 = {want}"
            )
        if len(set(self.ids)) != len(self.ids):
            raise InvalidArgumentError("token_ids must be unique within a vocabulary")
        emb = np.frombuffer(b"".join(self.parts), dtype="<f4").reshape(self.size, self.dim)
        self.parts = []
        return Vocabulary(tuple(self.tokens), tuple(self.ids), emb), self.expected
