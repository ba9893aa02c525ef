"""promptbo: ask/tell Bayesian optimization of prompts for pretrained language models.

The client side needs only grpcio, protobuf and NumPy::

    import promptbo
    client = promptbo.Client("127.0.0.1:50051")

The server lives in :mod:`promptbo.server` (``pip install promptbo[server]``), the
evaluators in :mod:`promptbo.evaluators` (``promptbo[hf]``, ``promptbo[openai]``).
"""

from promptbo.client import (
    Client,
    Study,
    StudyDoneError,
    Trial,
    TrialContext,
)
from promptbo.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    PromptboError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
)
from promptbo.spec import HardPromptSpace, PoolSpace, SoftPromptSpace, StudySpec
from promptbo.types import PoolTable, Prompt, Score, VocabularyTable

__version__ = "0.1.0"

__all__ = [
    "AlreadyExistsError",
    "Client",
    "FailedPreconditionError",
    "HardPromptSpace",
    "InvalidArgumentError",
    "NotFoundError",
    "PermissionDeniedError",
    "PoolSpace",
    "PoolTable",
    "Prompt",
    "PromptboError",
    "ResourceExhaustedError",
    "Score",
    "SoftPromptSpace",
    "Study",
    "StudyDoneError",
    "StudySpec",
    "Trial",
    "TrialContext",
    "UnauthenticatedError",
    "UnavailableError",
    "VocabularyTable",
    "__version__",
]
