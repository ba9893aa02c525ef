"""The README's and docs' code blocks run as written.

Each test extracts fenced blocks from a markdown section and runs them in a fresh folder
with the project's ``promptbo`` on PATH: bash blocks with ``bash -e``, Python blocks with
the interpreter, against real servers (the README's bash block starts and stops its own).
The only changes are :data:`SUBSTITUTIONS`: the tiny test Llama stands in for SmolLM2,
budgets shrink to a few trials, and the server port is a free one.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from promptbo.server.app import ServerOptions, create_server
from promptbo.server.domain import TrialState

ROOT = Path(__file__).parents[2]


def blocks(markdown: Path, heading: str, lang: str) -> list[str]:
    """The ``lang`` fenced blocks of the section under ``heading`` (up to the next heading
    of the same or a higher level)."""
    lines = markdown.read_text().splitlines(keepends=True)
    level = len(heading.split(" ", 1)[0])
    start = lines.index(heading + "\n") + 1
    section, fenced = [], False
    for line in lines[start:]:
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(rf"#{{1,{level}}} ", line):
            break
        section.append(line)
    return re.findall(rf"^```{lang}\n(.*?)^```", "".join(section), flags=re.M | re.S)


def substitute(code: str, table: dict[str, str]) -> str:
    for old, new in table.items():
        assert old in code, f"the docs no longer contain {old!r}: update SUBSTITUTIONS"
        code = code.replace(old, new)
    return code


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env(**extra: str) -> dict[str, str]:
    out = {**os.environ, **extra}
    out["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{out.get('PATH', '')}"
    out["HF_HUB_OFFLINE"] = "1"
    return out


def run_bash(code: str, cwd: Path, **extra: str) -> subprocess.CompletedProcess:
    done = subprocess.run(["bash", "-e", "-c", code], cwd=cwd, env=env(**extra),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{code}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    return done


@pytest.mark.slow
def test_readme_use_it_blocks_run(tmp_path, tiny_llama_dir):
    port = free_port()
    (bash,) = blocks(ROOT / "README.md", "## Use it", "bash")
    bash = substitute(bash, {
        "model=smollm2": f"model={tiny_llama_dir}", "--top-n 2000": "--top-n 100",
        "--trials 100": "--trials 4", "--port 50051": f"--port {port}",
    })
    done = run_bash(bash, tmp_path, PROMPTBO_SERVER=f"127.0.0.1:{port}")
    assert "worker done: 4 completed" in done.stdout and "prompt:" in done.stdout
    assert "selected: trial" in done.stdout
    assert (tmp_path / "sst2-trials.csv").read_text().startswith("id,state,value,text")

    (python,) = blocks(ROOT / "README.md", "## Use it", "python")
    python = substitute(python, {'"smollm2"': repr(str(tiny_llama_dir)),
                                 "max_trials=100": "max_trials=4"})
    server, bound, manager = create_server(f"sqlite:///{tmp_path / 'py.db'}",
                                           ServerOptions(port=0))
    try:
        done = subprocess.run([sys.executable, "-c", python], cwd=tmp_path,
                              env=env(PROMPTBO_SERVER=f"127.0.0.1:{bound}"),
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        assert manager.study_counts("sst2-python")[TrialState.COMPLETED] == 4
        assert done.stdout.strip()  # the best prompt's text
    finally:
        server.stop(0)
        manager.close()


def test_readme_js_block_is_the_node_packages_tested_example():
    (root_js,) = blocks(ROOT / "README.md", "## From any language, on any number of hosts", "js")
    node_readme = (ROOT / "clients" / "node" / "README.md").read_text()
    node_js = re.search(r"^```js\n(.*?)^```", node_readme, flags=re.M | re.S)
    assert node_js is not None and root_js == node_js.group(1)  # run by test/package.test.js


def test_readme_says_how_to_get_promptbo_on_path_and_extras():
    readme = (ROOT / "README.md").read_text()
    assert 'export PATH="$PWD/.venv/bin:$PATH"' in readme
    assert 'pip install -e ".[ray]"' in readme


@pytest.mark.slow
def test_python_evaluator_docs_blocks_run(tmp_path, tiny_llama_dir):
    docs = ROOT / "docs" / "evaluators.md"
    (module,) = blocks(docs, "### python", "python")
    (bash,) = blocks(docs, "### python", "bash")
    (tmp_path / "my_scoring.py").write_text(module)
    bash = substitute(bash, {"--vocabulary smollm2": f"--vocabulary {tiny_llama_dir}",
                             "--trials 40": "--trials 4", "--trials 20": "--trials 3"})
    server, port, manager = create_server(f"sqlite:///{tmp_path / 'ev.db'}",
                                          ServerOptions(port=0))
    try:
        done = run_bash(bash, tmp_path, PROMPTBO_SERVER=f"127.0.0.1:{port}")
        assert "worker done: 4 completed" in done.stdout
        assert "worker done: 3 completed" in done.stdout
        study = manager.get_study("s")
        assert study.spec.labels["promptbo.setup/scale"] == "2"
        assert study.spec.space.embedding_dim == 8
    finally:
        server.stop(0)
        manager.close()
