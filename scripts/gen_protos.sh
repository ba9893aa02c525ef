#!/usr/bin/env bash
# Regenerates the checked-in Python code for protos/ (run from anywhere).
# CI runs it and fails if the result differs from what is committed.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="$root/clients/python"
rm -f "$out"/promptbo/v1/*_pb2*.py "$out"/promptbo/v1/*_pb2*.pyi
python -m grpc_tools.protoc -I "$root/protos" \
  --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  "$root"/protos/promptbo/v1/*.proto
