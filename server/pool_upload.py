"""Assembling an UploadPool stream into a :class:`~promptbo.server.domain.Pool`, checked
chunk by chunk as :mod:`~promptbo.server.upload` does for vocabularies.

The first chunk carries the header (``size``, ``embedding_dim``, ``embedding_model``,
``expected_id``); every chunk may carry texts and float32 embedding rows, in order.
"""

from __future__ import annotations

from promptbo.errors import InvalidArgumentError
from promptbo.server.domain import Pool
from promptbo.server.upload import TableUpload

MAX_POOL_TEXT_BYTES = 64 * 1024


class PoolUpload(TableUpload):
    """A pool's chunks: a candidate text per row, and the embedding model's name."""

    what = "pool"

    def __init__(self) -> None:
        super().__init__()
        self.model = ""
        self.texts: list[str] = []

    def _header(self, chunk) -> None:
        self.model = chunk.embedding_model

    def _rows_after(self, chunk) -> int:
        return len(self.texts) + len(chunk.texts)

    def _rows(self, chunk) -> None:
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

    def finish(self) -> tuple[Pool, str]:
        """The pool and the client's expected id, once every chunk is in. Raises
        InvalidArgumentError for an empty or incomplete stream."""
        emb = self._embeddings(len(self.texts))
        return Pool(tuple(self.texts), emb, self.model), self.expected

