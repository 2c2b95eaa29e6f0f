"""Every promise of the README and of the documentation pages (docs/*.md) holds: each ```python
block runs as written, and the commands of the shell blocks exist with the options they are shown
with."""

from __future__ import annotations

import pathlib
import re
import shlex
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
PAGES = {"README.md": README} | {f"docs/{p.name}": p.read_text(encoding="utf-8") for p in sorted((ROOT / "docs").glob("*.md"))}

# The two commands the README opens with: `.ci/run` runs the second one verbatim.
DEMO_COMMAND = 'pip install ".[demo]" && rebasin demo'
TEST_COMMAND = 'pip install ".[test]" && cargo test --release -p rebasin-core && pytest -q'


def blocks(language: str, text: str | None = None) -> list[tuple[int, str, str]]:
    """``(line, heading, code)`` of every fenced block in ``language``, in page order: of ``text``,
    or of the README and every documentation page (the heading then names the page)."""
    if text is None:
        return [(ln, f"{page}:{h}", code) for page, body in PAGES.items() for ln, h, code in blocks(language, body)]
    out, heading = [], ""
    lines = text.splitlines()
    k = 0
    while k < len(lines):
        line = lines[k]
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        if line.startswith("```"):
            lang, start = line[3:].strip(), k + 1
            k += 1
            while not lines[k].startswith("```"):
                k += 1
            if lang == language:
                out.append((start, heading, "\n".join(lines[start:k]) + "\n"))
        k += 1
    return out


PYTHON = blocks("python")
BASH = blocks("bash")


def test_the_readme_has_its_examples():
    assert len(blocks("python", README)) >= 2 and len(blocks("bash", README)) >= 3
    assert len(PYTHON) >= 6 and len(BASH) >= 5


def test_the_readme_links_every_documentation_page():
    linked = set(re.findall(r"\]\((docs/[\w-]+\.md)\)", README))
    assert linked == {p for p in PAGES if p.startswith("docs/")} - {"docs/changelog.md"}, linked


@pytest.mark.parametrize("line,heading,code", PYTHON, ids=[f"line{ln}-{h.replace(' ', '_')}" for ln, h, _ in PYTHON])
def test_python_block_runs_as_written(line, heading, code, tmp_path, monkeypatch):
    for module in ("torch", "torchvision", "matplotlib"):
        if re.search(rf"\b{module}\b", code) or (module == "matplotlib" and "plot_curves" in code):
            pytest.importorskip(module)
    monkeypatch.chdir(tmp_path)  # files the examples write (curves.png) land here
    namespace: dict = {"__name__": "__readme__"}
    try:
        exec(compile(code, f"{heading.split(':')[0]}, line {line}", "exec"), namespace)  # noqa: S102 - the README's own code
    finally:
        if "torch" in sys.modules:
            # A block that teaches the tracer a rule must not teach the other tests.
            import rebasin_rs.torch as rbt

            for value in list(namespace.values()):
                if callable(value):
                    rbt.unregister_rule(value)


def test_the_first_two_commands_stay_first_and_exact():
    assert [code.strip() for _, _, code in blocks("bash", README)[:2]] == [DEMO_COMMAND, TEST_COMMAND]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert TEST_COMMAND in ci.splitlines(), ".ci/run must run the README's test command verbatim"


def shell_commands() -> list[list[str]]:
    """Each command of the shell blocks, split on ``&&``, comments dropped."""
    out = []
    for _, _, code in BASH:
        for line in code.splitlines():
            for part in line.split("&&"):
                words = shlex.split(part, comments=True)
                if words:
                    out.append(words)
    return out


def test_pip_installs_name_extras_that_exist():
    tomllib = pytest.importorskip("tomllib")
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    named = set()
    for words in shell_commands():
        if words[:2] == ["pip", "install"]:
            for w in words[2:]:
                m = re.fullmatch(r".*\[([\w,-]+)\]", w)
                if m:
                    named.update(m.group(1).split(","))
    assert named and named <= extras, sorted(named - extras)


def test_cargo_and_maturin_commands_name_what_exists():
    tomllib = pytest.importorskip("tomllib")
    cargo_packages = {tomllib.loads(p.read_text())["package"]["name"] for p in ROOT.glob("rust/*/Cargo.toml")}
    for words in shell_commands():
        if words[0] == "cargo" and "-p" in words:
            assert words[words.index("-p") + 1] in cargo_packages
    assert "maturin" in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]


def rebasin_lines() -> list[list[str]]:
    return [w for w in shell_commands() if w[0] == "rebasin"]


def test_the_rebasin_command_is_installed():
    out = subprocess.run(["rebasin", "--help"], check=False, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for words in rebasin_lines():
        assert words[1] in out.stdout


@pytest.mark.parametrize("words", rebasin_lines(), ids=lambda w: " ".join(w[:2]))
def test_rebasin_subcommands_accept_the_options_shown(words, capsys):
    from rebasin_rs import cli

    with pytest.raises(SystemExit) as exit_:
        cli.main([words[1], "--help"])
    assert exit_.value.code == 0
    help_text = capsys.readouterr().out
    for w in words[2:]:
        if w.startswith("--"):
            assert re.search(rf"(^|\s){re.escape(w)}\b", help_text), f"rebasin {words[1]} has no option {w}"
