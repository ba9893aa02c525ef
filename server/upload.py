"""Assembling an upload stream (a vocabulary or a candidate pool), checked chunk by chunk.

:class:`TableUpload` takes the chunks of a stream as they arrive and refuses, at the first
chunk that breaks it, any stream that carries more than its first chunk declared
(``size x embedding_dim`` float32 values and ``size`` rows) or changes the declaration
midway. The server therefore never holds more than the declared table (at most
:data:`MAX_TABLE_BYTES`) plus one message, whatever a client sends.
:class:`VocabularyUpload` (tokens and token ids per row) and
:class:`~promptbo.server.pool_upload.PoolUpload` (a text per row) add their own row data.
"""

from __future__ import annotations

import numpy as np

from promptbo.errors import InvalidArgumentError
from promptbo.server.domain import Vocabulary
from promptbo.server.wire import MalformedRequest

MAX_TABLE_ROWS = 1_000_000
MAX_TABLE_BYTES = 2 * 1024**3
MAX_EMBEDDING_DIM = 65536


class TableUpload:
    """The chunks of one upload of a ``size x embedding_dim`` table received so far.

    Subclasses name the table (``what``), take a chunk's row data in :meth:`_rows` (after
    the size checks) and assemble the result in ``finish``.
    """

    what = "table"

    def __init__(self) -> None:
        self.size = self.dim = 0
        self.expected = ""
        self.parts: list[bytes] = []
        self.nbytes = 0
        self.count = 0

    def add(self, chunk) -> None:
        """Takes one request message of the stream. Raises InvalidArgumentError as soon as
        the stream breaks its declaration."""
        i = self.count
        if isinstance(chunk, MalformedRequest):
            raise InvalidArgumentError(f"chunk {i}: {chunk.details}")
        if i == 0:
            size, dim = chunk.size, chunk.embedding_dim
            if not (1 <= size <= MAX_TABLE_ROWS) or not (1 <= dim <= MAX_EMBEDDING_DIM):
                raise InvalidArgumentError(
                    f"the first chunk must give size in [1, {MAX_TABLE_ROWS}] and "
                    f"embedding_dim in [1, {MAX_EMBEDDING_DIM}]; got size={size}, "
                    f"embedding_dim={dim}"
                )
            if size * dim * 4 > MAX_TABLE_BYTES:
                raise InvalidArgumentError(f"the {self.what}'s embedding table is larger "
                                           "than 2 GiB")
            self.size, self.dim, self.expected = size, dim, chunk.expected_id
            self._header(chunk)
        elif (chunk.size and chunk.size != self.size) or (
            chunk.embedding_dim and chunk.embedding_dim != self.dim
        ):
            raise InvalidArgumentError(f"chunk {i} changes size or embedding_dim mid-upload")
        nbytes = self.nbytes + len(chunk.embeddings)
        if self._rows_after(chunk) > self.size or nbytes > self.size * self.dim * 4:
            raise InvalidArgumentError(
                f"chunk {i} carries more data than the declared size={self.size} x "
                f"dim={self.dim}"
            )
        self._rows(chunk)
        self.parts.append(chunk.embeddings)
        self.nbytes = nbytes
        self.count += 1

    def _header(self, chunk) -> None:
        """Reads the first chunk's fields beyond size, dimension and expected id."""

    def _rows_after(self, chunk) -> int:
        """The most rows of row data held once ``chunk`` is added."""
        raise NotImplementedError

    def _rows(self, chunk) -> None:
        """Takes ``chunk``'s row data (its count already checked)."""
        raise NotImplementedError

    def _embeddings(self, rows: int) -> np.ndarray:
        """The ``size x dim`` table, once every chunk is in. Raises InvalidArgumentError for
        an empty stream or one whose ``rows`` or bytes fall short of the declaration."""
        if self.count == 0:
            raise InvalidArgumentError("the upload stream was empty")
        want = self.size * self.dim * 4
        if rows != self.size or self.nbytes != want:
            raise InvalidArgumentError(
                f"got {rows} rows and {self.nbytes} bytes of embeddings; the header declared "
                f"size={self.size} rows and size x dim x 4 = {want} bytes"
            )
        emb = np.frombuffer(b"".join(self.parts), dtype="<f4").reshape(self.size, self.dim)
        self.parts = []
        return emb


class VocabularyUpload(TableUpload):
    """A vocabulary's chunks: tokens and token ids per row (see module doc)."""

    what = "vocabulary"

    def __init__(self) -> None:
        super().__init__()
        self.tokens: list[str] = []
        self.ids: list[int] = []

    def _rows_after(self, chunk) -> int:
        return max(len(self.tokens) + len(chunk.tokens), len(self.ids) + len(chunk.token_ids))

    def _rows(self, chunk) -> None:
        self.tokens.extend(chunk.tokens)
        self.ids.extend(chunk.token_ids)

    def finish(self) -> tuple[Vocabulary, str]:
        """The vocabulary and the client's expected id, once every chunk is in.
        Raises InvalidArgumentError for an empty or incomplete stream."""
        emb = self._embeddings(self.size if len(self.tokens) == len(self.ids) else -1)
        if len(set(self.ids)) != len(self.ids):
            raise InvalidArgumentError("token_ids must be unique within a vocabulary")
        return Vocabulary(tuple(self.tokens), tuple(self.ids), emb), self.expected
