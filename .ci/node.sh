#!/usr/bin/env bash
# CI for the Node.js client: installs it from its lock file and runs its end-to-end tests
# against a real `promptbo serve` from the project's virtual environment.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
cd clients/node
npm ci
npm test
