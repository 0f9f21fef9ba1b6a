"""The repository stands on its own: no file points to pages outside it.

Every text file the repository tracks (``git ls-files``; in a tree that is not a git checkout,
such as an unpacked sdist, every file under the root) is searched for references to notes that
ship with neither the repository nor its packages. A hit fails the test with the file, the line
number and the line. Documentation points into ``docs/`` or to an upstream source instead.

The patterns are assembled from pieces at run time, so this file does not match them itself.
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
from collections.abc import Iterator

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

# Each pattern is split so that the literal never appears in this file.
_FORBIDDEN = [
    re.escape("../" + "shared"),
    re.escape("/work/" + "shared"),
    re.escape("shared/" + "DESIGN"),
    re.escape("DESIGN" + ".md"),
    re.escape("shared/" + "reference"),
    "issue" + r"\s+" + "notes?",
]
PATTERN = re.compile("|".join(f"(?:{p})" for p in _FORBIDDEN), re.IGNORECASE)

#: Directories a walk (no git) leaves out: caches, build outputs and environments.
_SKIP_DIRS = {
    ".git",
    ".venv",
    ".cache",
    ".mypy_cache",
    ".pytest_cache",
    ".ruff_cache",
    ".hypothesis",
    ".benchmarks",
    "__pycache__",
    "node_modules",
    "target",
    "dist",
    "build",
}


def _git_files(root: pathlib.Path) -> list[pathlib.Path] | None:
    """The tracked files, or None when ``root`` is not the top of a git checkout."""
    try:
        top = subprocess.run(
            ["git", "rev-parse", "--show-toplevel"],
            cwd=root,
            capture_output=True,
            text=True,
            check=False,
        )
        if top.returncode != 0 or pathlib.Path(top.stdout.strip()).resolve() != root.resolve():
            return None
        listed = subprocess.run(
            ["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    names = [n for n in listed.stdout.decode("utf-8", "surrogateescape").split("\0") if n]
    return [root / n for n in names]


def _walk_files(root: pathlib.Path) -> list[pathlib.Path]:
    """Every file under ``root``, without caches and build outputs."""
    out: list[pathlib.Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        out += [pathlib.Path(dirpath) / f for f in sorted(filenames)]
    return out


def repository_files(root: pathlib.Path = ROOT) -> list[pathlib.Path]:
    """The files to check: tracked ones in a git checkout, else every file in the tree."""
    files = _git_files(root)
    return _walk_files(root) if files is None else files


def _text(path: pathlib.Path) -> str | None:
    """The file's text, or None for a binary file, a link or a file that is gone."""
    if path.is_symlink() or not path.is_file():
        return None
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def outside_references(path: pathlib.Path, root: pathlib.Path = ROOT) -> Iterator[str]:
    """``file:line: text`` for each line of ``path`` that points outside the repository."""
    text = _text(path)
    if text is None:
        return
    for number, line in enumerate(text.splitlines(), 1):
        if PATTERN.search(line):
            yield f"{path.relative_to(root)}:{number}: {line.strip()}"


def test_no_file_points_outside_the_repository() -> None:
    files = repository_files()
    assert len(files) > 50, f"found only {len(files)} files under {ROOT}"
    hits = [hit for path in files for hit in outside_references(path)]
    assert not hits, (
        "these lines point to pages outside the repository; point to docs/ or to an upstream "
        "source instead:\n" + "\n".join(hits)
    )


def test_this_file_is_scanned_and_does_not_match_itself() -> None:
    me = pathlib.Path(__file__).resolve()
    assert me in {p.resolve() for p in repository_files()}
    assert list(outside_references(me)) == []


@pytest.mark.parametrize(
    "line",
    [
        "See `" + "../" + "shared/" + "DESIGN" + ".md` for the design.",
        "In order (" + "DESIGN" + ".md §4):",
        "Sources are in `" + "shared/" + "reference/" + "mig-geometry.md`.",
        "lines are what the " + "issue " + "notes record.",
        "as the " + "Issue " + "Note says",
        "cat /work/" + "shared/" + "x",
    ],
)
def test_each_form_is_caught(tmp_path: pathlib.Path, line: str) -> None:
    f = tmp_path / "page.md"
    f.write_text(f"first line\n{line}\n")
    assert list(outside_references(f, tmp_path)) == [f"page.md:2: {line}"]


def test_without_git_every_text_file_is_walked_and_binaries_are_skipped(
    tmp_path: pathlib.Path,
) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("see " + "DESIGN" + ".md\n")
    (tmp_path / "lib.so").write_bytes(b"\x7fELF\0\0" + ("DESIGN" + ".md").encode())
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9 " + ("DESIGN" + ".md").encode())
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "x.md").write_text("DESIGN" + ".md\n")
    files = repository_files(tmp_path)
    assert {p.relative_to(tmp_path).as_posix() for p in files} == {
        "docs/a.md",
        "lib.so",
        "latin1.txt",
    }
    hits = [hit for p in files for hit in outside_references(p, tmp_path)]
    assert hits == ["docs/a.md:1: see " + "DESIGN" + ".md"]
