"""The repository stands on its own: no machine paths in tracked files, documentation links that
resolve inside the repository, and the import direction of docs/architecture.md."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "cryoparticle"

# Absolute paths of one machine (the patterns are assembled so that this file has none).
_SLASH = "/"
MACHINE_PATH = re.compile(
    r"(?<![\w.~$:/-])" + _SLASH + r"(?:tmp|work|root|Users|private/var|var/folders|scratch)"
    + _SLASH
    + r"|" + _SLASH + r"home" + _SLASH + r"[A-Za-z0-9_.-]+" + _SLASH
    + r"|[/\\](?:site|dist)-packages\b"
    + r"|\.pyenv" + _SLASH + "versions"
    + r"|" + _SLASH + r"opt" + _SLASH + r"(?:conda|miniconda\d?|anaconda\d?)\b"
    + r"|\b[A-Za-z]:\\\\?(?:Users|Documents and Settings)\\")


def tracked_files() -> list[Path]:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    result = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                            timeout=60, check=False)
    if result.returncode != 0:
        pytest.skip("not a git checkout")
    return [ROOT / name for name in result.stdout.decode().split("\0") if name]


def machine_paths(path: Path) -> list[str]:
    """``file:line: text`` of every line of ``path`` holding a machine path (text files)."""
    try:
        data = path.read_bytes()
    except OSError:
        return []
    if b"\0" in data[:8192]:  # binary
        return []
    text = data.decode("utf-8", errors="replace")
    return [f"{path.relative_to(ROOT)}:{number}: {line.strip()[:160]}"
            for number, line in enumerate(text.splitlines(), start=1)
            if MACHINE_PATH.search(line)]


def test_the_machine_path_check_finds_what_it_looks_for(tmp_path):
    bad = tmp_path / "x.json"
    lines = ["/".join(["", "tmp", "run", "a.ckpt"]), "/".join(["", "home", "alice", "x.py"]),
             "/".join(["lib", "python3.11", "site-packages", "torch"]),
             "C:" + "\\" + "Users" + "\\" + "bob", "ok: tests/data/x.csv and https://a.org/tmp/x"]
    bad.write_text("\n".join(lines) + "\n")
    found = [line.split(":")[1] for line in
             (f.replace(str(tmp_path), "") for f in _scan(bad))]
    assert found == ["1", "2", "3", "4"]


def _scan(path: Path) -> list[str]:
    text = path.read_text()
    return [f"{path}:{n}:" for n, line in enumerate(text.splitlines(), 1)
            if MACHINE_PATH.search(line)]


def test_no_machine_paths_in_tracked_files():
    hits = [hit for path in tracked_files() if path.is_file() for hit in machine_paths(path)]
    assert not hits, "absolute paths of a machine in tracked files:\n" + "\n".join(hits)


def test_documentation_links_resolve_inside_the_repository():
    docs = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for doc in docs:
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue  # a URL or an anchor
            resolved = (doc.parent / target.split("#")[0]).resolve()
            if not resolved.exists() or ROOT not in resolved.parents:
                broken.append(f"{doc.relative_to(ROOT)}: {target}")
    assert not broken, broken


def _imports(path: Path) -> set[str]:
    """The ``cryoparticle`` modules ``path`` imports (at any level: lazy imports count)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return {n for n in names if n.startswith("cryoparticle")}


# (package or module, prefixes it must not import): docs/architecture.md's direction
# io → simulate/data → models (+crf) → picking; viz and errors are leaves for everyone.
FORBIDDEN = {
    "io": ("cryoparticle.data", "cryoparticle.models", "cryoparticle.crf",
           "cryoparticle.picking", "cryoparticle.simulate", "cryoparticle.training"),
    "simulate": ("cryoparticle.models", "cryoparticle.crf", "cryoparticle.picking",
                 "cryoparticle.training"),
    "data": ("cryoparticle.models", "cryoparticle.crf", "cryoparticle.picking",
             "cryoparticle.training"),
    "crf": ("cryoparticle.models", "cryoparticle.picking", "cryoparticle.training"),
    "models": ("cryoparticle.picking.predict", "cryoparticle.picking.inputs",
               "cryoparticle.picking.module", "cryoparticle.picking.writers",
               "cryoparticle.picking.settings", "cryoparticle.training"),
    "picking/extract.py": ("cryoparticle.models", "cryoparticle.crf", "cryoparticle.data",
                           "cryoparticle.training"),
    "picking/evaluate.py": ("cryoparticle.models", "cryoparticle.crf", "cryoparticle.data",
                            "cryoparticle.training"),
    "viz.py": ("cryoparticle.data", "cryoparticle.models", "cryoparticle.crf",
               "cryoparticle.picking", "cryoparticle.simulate"),
}


@pytest.mark.parametrize("part", list(FORBIDDEN))
def test_import_direction(part):
    target = PACKAGE / part
    files = sorted(target.rglob("*.py")) if target.is_dir() else [target]
    assert files
    wrong = [f"{f.relative_to(ROOT)} imports {name}" for f in files for name in _imports(f)
             if name.startswith(FORBIDDEN[part])]
    assert not wrong, wrong
