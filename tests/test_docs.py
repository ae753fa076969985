"""Every code block of README.md and of the guides in docs/ runs exactly as printed.

Python blocks run in a fresh namespace each, in a temporary directory; bash blocks run in a shell
there. A block preceded by ``<!-- network: REASON -->`` needs the internet (the Hugging Face Hub, a
hosted API, the package index): it carries the ``network`` marker, so the default run and CI leave
it out and ``-m network`` runs it on a connected machine. One preceded by ``<!-- not run: REASON -->``
is skipped with that reason (a GPU server, hours of compute, or the test command itself); one
preceded by ``<!-- slow: REASON -->`` runs in the slow set (``-m slow``, which CI runs too), not in
the default run. A python block followed directly by a
``text`` block must print exactly that text (``...`` stands for any run of characters). Blocks
without a language are not code.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_BLOCK = re.compile(
    r"(?:<!-- not run: (?P<reason>.*?) -->\n|<!-- slow: (?P<slow>.*?) -->\n|<!-- network: (?P<network>.*?) -->\n)?"
    r"```(?P<lang>python|bash)\n(?P<code>.*?)```"
    r"(?:\n\n```text\n(?P<printed>.*?)```)?",
    re.S,
)


def blocks() -> list[tuple[str, Path, str, str | None, str, str | None, list[pytest.MarkDecorator]]]:
    out = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for m in _BLOCK.finditer(text):
            line = text[: m.start("code")].count("\n") + 1
            where = f"{page.relative_to(ROOT)}:{line} ({m['lang']})"
            marks = [pytest.mark.slow] if m["slow"] is not None else []
            marks += [pytest.mark.network] if m["network"] is not None else []
            out.append((where, page, m["lang"], m["reason"], m["code"], m["printed"], marks))
    return out


BLOCKS = blocks()


def test_every_block_is_seen():
    for page in PAGES:
        fenced = len(re.findall(r"```(?:python|bash)\n", page.read_text(encoding="utf-8")))
        assert sum(b[1] == page for b in BLOCKS) == fenced, page
    assert len(BLOCKS) >= 15


def _matches(expected: str, printed: str) -> bool:
    pattern = ".*?".join(re.escape(part) for part in expected.strip().split("..."))
    return re.fullmatch(pattern, printed.strip(), re.S) is not None


@pytest.mark.parametrize(
    ("page", "lang", "reason", "code", "printed"),
    [pytest.param(*b[1:6], marks=b[6], id=b[0]) for b in BLOCKS],
)
def test_block_runs_as_printed(page, lang, reason, code, printed, tmp_path, monkeypatch):
    if reason:
        pytest.skip(reason)
    monkeypatch.chdir(tmp_path)
    if lang == "python":
        out = io.StringIO()
        # a real module, as a user's script is: libraries that read annotations (LangGraph's state
        # schema) look its globals up through sys.modules
        module = types.ModuleType("__docs__")
        monkeypatch.setitem(sys.modules, "__docs__", module)
        with contextlib.redirect_stdout(out):
            exec(compile(code, str(page), "exec"), module.__dict__)
        if printed is not None:
            assert _matches(printed, out.getvalue()), f"printed:\n{out.getvalue()}\nexpected:\n{printed}"
        return
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
