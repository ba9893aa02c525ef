#!/usr/bin/env bash
# Type-checks the `promptbo` package as it is installed, with every internal import resolved.
#
# The package is spread over three folders (see [tool.setuptools.package-dir]):
# clients/python/promptbo is `promptbo`, server/ is `promptbo.server` and evaluators/ is
# `promptbo.evaluators`. mypy resolves modules by folder, so this script lays the package out
# as it is installed, as a tree of symlinks under build/typecheck/, and checks it there with
# `mypy -p promptbo` (configuration in pyproject.toml [tool.mypy]); messages name the files
# by their paths in the checkout. Extra arguments go to mypy.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

tree="$root/build/typecheck"
pkg="$tree/promptbo"
rm -rf "$tree"
mkdir -p "$pkg"
for entry in clients/python/promptbo/*; do
  case "$(basename "$entry")" in
    __pycache__) continue ;;
  esac
  ln -s "$root/$entry" "$pkg/$(basename "$entry")"
done
ln -s "$root/server" "$pkg/server"
ln -s "$root/evaluators" "$pkg/evaluators"

python="${PYTHON:-$root/.venv/bin/python}"
test -x "$python" || python=python
MYPYPATH="$tree" "$python" -m mypy -p promptbo "$@" 2>&1 | sed \
  -e "s#^\(\($root/\)\?build/typecheck/promptbo/\)\(server\|evaluators\)/#\3/#" \
  -e "s#^\($root/\)\?build/typecheck/promptbo/#clients/python/promptbo/#"
