"""Every code block of README.md runs exactly as printed.

Python blocks run in a fresh namespace each, in a temporary directory; bash blocks run in a shell
there. A block preceded by ``<!-- not run: REASON -->`` is skipped with that reason (it needs the
network, a GPU server, or is the test command itself). Blocks without a language (program output)
are not code.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
_BLOCK = re.compile(
    r"(?:<!-- not run: (?P<reason>.*?) -->\n)?```(?P<lang>python|bash)\n(?P<code>.*?)```", re.S
)


def blocks() -> list[tuple[str, str, str | None, str]]:
    text = README.read_text(encoding="utf-8")
    out = []
    for m in _BLOCK.finditer(text):
        line = text[: m.start("code")].count("\n") + 1
        out.append((f"line {line} ({m['lang']})", m["lang"], m["reason"], m["code"]))
    return out


BLOCKS = blocks()


def test_every_block_is_seen():
    fenced = len(re.findall(r"```(?:python|bash)\n", README.read_text(encoding="utf-8")))
    assert len(BLOCKS) == fenced >= 15


@pytest.mark.parametrize(("lang", "reason", "code"), [b[1:] for b in BLOCKS], ids=[b[0] for b in BLOCKS])
def test_readme_block_runs_as_printed(lang, reason, code, tmp_path, monkeypatch):
    if reason:
        pytest.skip(reason)
    monkeypatch.chdir(tmp_path)
    if lang == "python":
        exec(compile(code, str(README), "exec"), {"__name__": "__readme__"})
        return
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
