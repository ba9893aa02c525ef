#!/usr/bin/env bash
# The whole test suite, as CI runs it: generated-code drift, lint, a throwaway
# PostgreSQL, the llama.cpp OpenAI-compatible server, pytest, and the Node client.
# Run through `make test` (which sets up .venv first).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

echo "== generated protobuf code is up to date"
tmp=$(mktemp -d)
cp -r clients/python/promptbo/v1 "$tmp/v1"
bash scripts/gen_protos.sh
if ! diff -r -q "$tmp/v1" clients/python/promptbo/v1 >/dev/null; then
  echo "generated code differs from protos/: run 'make protos' and commit the result" >&2
  diff -r "$tmp/v1" clients/python/promptbo/v1 | head -20 >&2
  exit 1
fi
rm -rf "$tmp"

echo "== lint and types"
ruff check .
bash scripts/typecheck.sh

echo "== PostgreSQL for the storage contract suite"
if pg_env=$(bash .ci/postgres.sh start); then
  eval "$pg_env"
  # Stop only a server this run started: a reused one may serve another run.
  if [ "${PROMPTBO_PG_STARTED:-}" = 1 ]; then
    trap 'bash .ci/postgres.sh stop >/dev/null 2>&1 || true' EXIT
  fi
else
  echo "PostgreSQL could not be started; its storage tests will fail" >&2
fi

echo "== llama.cpp server for the openai evaluator"
bash .ci/llamacpp.sh
export PROMPTBO_REQUIRE_LLAMACPP=1

echo "== Chromium for the dashboard test"
bash .ci/browser.sh
export PROMPTBO_REQUIRE_BROWSER=1

echo "== pytest"
python -m pytest -q "$@"

if [ -d clients/node ] && command -v node >/dev/null; then
  echo "== Node.js client"
  bash .ci/node.sh
fi
