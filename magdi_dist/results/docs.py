"""``magdi-dist results [--check]``: every generated block of the documents made again from the raw
files in ``docs/results/<name>/``.

A block is the text between a line ``<!-- results:NAME:KIND -->`` and the next ``<!-- /results -->``,
in README.md or any Markdown file under docs/. NAME is the collected folder, KIND what is drawn from it:

    setup  the data, training and evaluation settings and counts (results.tables)
    table  one row per cell (results.tables)
    fit    the power-law fit, checked against the cells (results.tables)
    run    a timed run's wall time, load, machine and commit (results.run)
    study  a seeded two-variant study: progress, seed means, paired comparison (results.seeds)
    ablation  one row per variant and every pair compared on the same questions (results.ablation)
    plot   the scaling-curve image (results.plots; the PNG is redrawn, never compared)
    bars   an ablation's accuracy and held-out loss per variant (results.ablation; redrawn, never compared)

Text outside the markers is never touched. ``--check`` makes every block in memory and reports a
unified diff of each document that differs (exit 1), so a hand-edited number, or a raw file changed
without regenerating, fails CI.
"""

from __future__ import annotations

import contextlib
import difflib
import re
from collections.abc import Callable
from pathlib import Path

from magdi_dist.results import ablation, plots, run, seeds, tables
from magdi_dist.results.files import ResultsError
from magdi_dist.results.raw import Collected, opened

BEGIN = re.compile(r"^<!-- results:(?P<name>[A-Za-z0-9_.\-]+):(?P<kind>[a-z]+) -->$", re.M)
END = "<!-- /results -->"
KINDS: dict[str, Callable[[Collected], str]] = {"setup": tables.setup, "table": tables.table, "fit": tables.fit,
                                               "run": run.run, "study": seeds.study, "ablation": ablation.ablation}
# Image blocks: the PNG is drawn again on write; the document holds only its image line.
IMAGES = {"plot": plots.plot, "bars": ablation.bars}


def checkout(start: Path, *, explicit: bool = False) -> Path:
    """The checkout whose documents are regenerated: ``start`` itself when named (``--root``, it needs
    a docs/ folder), else the nearest folder at or above it with pyproject.toml and docs/."""
    start = Path(start).resolve()
    if explicit:
        if not (start / "docs").is_dir():
            raise ResultsError(f"{start}: no docs/ folder")
        return start
    for folder in (start, *start.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "docs").is_dir():
            return folder
    raise ResultsError(f"{start} is not inside a source checkout (pyproject.toml and docs/): pass --root")


def missing(name: str) -> str:
    """The block of a folder not collected yet: says so, and how to collect it."""
    return (f"*Not collected yet: `docs/results/{name}/` does not exist "
            f"(`magdi-dist results collect RUN_FOLDER --name {name}`).*")


def documents(root: Path) -> list[Path]:
    docs = sorted((root / "docs").rglob("*.md")) if (root / "docs").is_dir() else []
    return [p for p in [root / "README.md", *docs] if p.is_file()]


def regenerate(text: str, doc: Path, root: Path, open_folder: Callable[[str], Collected | None], *,
               write: bool) -> str:
    """``text`` with every block made again (``write``: plots are drawn too)."""
    out, pos = [], 0
    for m in BEGIN.finditer(text):
        if m.start() < pos:
            continue
        line = text.count("\n", 0, m.start()) + 1
        end = text.find(END, m.end())
        nested = BEGIN.search(text, m.end(), end if end >= 0 else len(text))
        if end < 0 or nested:
            raise ResultsError(f"{doc}:{line}: {m.group(0)} is not closed by {END} before the next block")
        kind = m.group("kind")
        if kind not in KINDS and kind not in IMAGES:
            raise ResultsError(f"{doc}:{line}: unknown block kind {kind!r} (known: {', '.join([*KINDS, *IMAGES])})")
        c = open_folder(m.group("name"))
        if c is None:
            body = missing(m.group("name"))
        else:
            body = IMAGES[kind](c, doc, root, write) if kind in IMAGES else KINDS[kind](c)
        out.append(text[pos:m.end()] + "\n" + body.strip("\n") + "\n")
        pos = end
    out.append(text[pos:])
    return "".join(out)


def generate(root: Path, *, write: bool) -> list[tuple[Path, str, str]]:
    """(document, current text, regenerated text) of every document with blocks."""
    root = Path(root)
    results: list[tuple[Path, str, str]] = []
    with contextlib.ExitStack() as stack:
        cache: dict[str, Collected | None] = {}

        def open_folder(name: str) -> Collected | None:
            folder = root / "docs" / "results" / name
            if name not in cache:
                cache[name] = stack.enter_context(opened(folder)) if folder.is_dir() else None
            return cache[name]

        for doc in documents(root):
            text = doc.read_text(encoding="utf-8")
            if BEGIN.search(text):
                results.append((doc, text, regenerate(text, doc, root, open_folder, write=write)))
    return results


def diff(root: Path, doc: Path, old: str, new: str) -> str:
    rel = doc.relative_to(root).as_posix()
    return "".join(difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True),
                                        fromfile=f"{rel} (as committed)", tofile=f"{rel} (from docs/results/)"))


def check(root: Path) -> list[str]:
    """The diffs of documents that differ from what their raw files give (empty: all agree)."""
    return [diff(root, doc, old, new) for doc, old, new in generate(root, write=False) if old != new]


def write(root: Path) -> list[Path]:
    """Regenerate every block (and plot) in place; the documents that changed."""
    changed = []
    for doc, old, new in generate(root, write=True):
        if old != new:
            doc.write_text(new, encoding="utf-8")
            changed.append(doc)
    return changed
