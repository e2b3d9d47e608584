"""``docs/architecture.md`` stays true to the tree it describes.

The code moves under the page; these checks make a rename that forgets it fail the test command
instead of leaving a newcomer a map of files that no longer exist:
- every backticked repository path (``gateway/pipeline/run.py``, ``deploy/k8s/``) exists;
- every backticked dotted name of our packages (``gateway.policy.headers.parse_floopy_headers``,
  ``gateway.app:app_factory``) names a module that exists and, past the module, names that
  module's source defines or mentions;
- every ``docs/architecture.md §N`` cited in the code, the README or pyproject.toml names a
  section the page has, and nothing cites the old design guide that is not in the repository.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "architecture.md"

PACKAGES = ("shared", "gateway", "ingester", "devstack", "bench", "tests")
FILE_SUFFIXES = (".py", ".md", ".toml", ".yml", ".yaml", ".sh", ".json", ".jsonl", ".js", ".css")
PLACEHOLDER = re.compile(r"[<>*{}…\s]")
FENCE = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)
CODE_SPAN = re.compile(r"`([^`\n]+)`")
PATHLIKE = re.compile(r"[\w.\-]+(/[\w.\-]+)*/?")
DOTTED = re.compile(rf"(?:{'|'.join(PACKAGES)})(?:\.\w+)+(?::\w+)?")
SECTION = re.compile(r"^## (\d+)\. ", re.MULTILINE)
CITATION = re.compile(r"docs/architecture\.md §(\d+)")
OLD_GUIDE = "DESIGN" + ".md"  # spelled apart so this file does not cite it
CITING_DIRS = ("shared", "gateway", "ingester", "devstack", "bench", "tests", "deploy")
CITING_FILES = ("README.md", "pyproject.toml", "Makefile", "docker-compose.yml")


def _spans() -> list[str]:
    text = FENCE.sub("", DOC.read_text(encoding="utf-8"))
    return CODE_SPAN.findall(text)


def _repo_paths() -> list[str]:
    paths = []
    for span in _spans():
        if span.startswith(("/", ".")) or PLACEHOLDER.search(span):
            continue  # HTTP paths, hidden files and patterns such as <dir>/<sink>.jsonl
        if not PATHLIKE.fullmatch(span):
            continue
        if "/" in span or span.endswith(FILE_SUFFIXES):
            paths.append(span)
    return sorted(set(paths))


def _dotted_names() -> list[str]:
    return sorted({span for span in _spans() if DOTTED.fullmatch(span)})


def _module_file(parts: list[str]) -> Path | None:
    base = ROOT.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _citing_files() -> Iterator[Path]:
    for name in CITING_FILES:
        if (ROOT / name).is_file():
            yield ROOT / name
    for directory in CITING_DIRS:
        for path in sorted((ROOT / directory).rglob("*")):
            if "node_modules" in path.parts or not path.is_file():
                continue
            if path.suffix in (".py", ".md", ".toml", ".yml", ".yaml"):
                yield path


def test_the_page_names_paths_and_modules_at_all() -> None:
    # guards the extraction itself: a regex that matched nothing would pass every check below
    assert "gateway/pipeline/run.py" in _repo_paths()
    assert "gateway.policy.headers.parse_floopy_headers" in _dotted_names()


@pytest.mark.parametrize("path", _repo_paths())
def test_every_path_exists(path: str) -> None:
    target = ROOT / path
    assert target.exists(), f"docs/architecture.md names {path}, which is not in the repository"
    if path.endswith("/"):
        assert target.is_dir(), f"{path} is written as a directory but is a file"


@pytest.mark.parametrize("name", _dotted_names())
def test_every_dotted_name_resolves(name: str) -> None:
    module, _, attribute = name.partition(":")
    parts = module.split(".")
    for split in range(len(parts), 0, -1):
        source = _module_file(parts[:split])
        if source is not None:
            break
    else:
        pytest.fail(f"docs/architecture.md names {name}: no such module")
    rest = parts[split:] + ([attribute] if attribute else [])
    text = source.read_text(encoding="utf-8")
    for identifier in rest:
        assert re.search(rf"\b{re.escape(identifier)}\b", text), (
            f"docs/architecture.md names {name}: {source.relative_to(ROOT)} has no {identifier}"
        )


def test_citations_name_sections_that_exist() -> None:
    sections = set(SECTION.findall(DOC.read_text(encoding="utf-8")))
    assert sections, "the page has no numbered sections"
    wrong = [
        f"{path.relative_to(ROOT)}: §{number}"
        for path in _citing_files()
        for number in CITATION.findall(path.read_text(encoding="utf-8", errors="replace"))
        if number not in sections
    ]
    assert not wrong, f"citations of sections docs/architecture.md does not have: {wrong}"


def test_nothing_cites_the_guide_that_is_not_in_the_repository() -> None:
    citing = [
        str(path.relative_to(ROOT))
        for path in _citing_files()
        if OLD_GUIDE in path.read_text(encoding="utf-8", errors="replace")
    ]
    assert not citing, f"{OLD_GUIDE} is not in the repository; cite docs/architecture.md: {citing}"
