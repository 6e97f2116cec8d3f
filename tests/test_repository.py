"""The repository stands alone: its reference data is intact, no tracked file reaches outside it,
and every link in its Markdown documents resolves to a file (and heading) inside it."""

from __future__ import annotations

import hashlib
import re
import subprocess
from pathlib import Path

import pytest
from conftest import REFDATA, REPO
from loopback_servers import BIN

# Names of the developers' own workspace, which a clone never has. Spelled in pieces so that
# this file does not name them itself.
OUTSIDE = re.compile(r"\.\./" + "shared" + r"|\b" + "SP" + "EC" + r"\b|/" + "work" + "/")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)


def tracked_files() -> list[Path]:
    listing = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True, text=True
    ).stdout
    return [REPO / name for name in listing.split("\0") if name]


def outside_references(paths: list[Path], root: Path = REPO) -> list[str]:
    """'path:line: text' for every line of a text file among ``paths`` (under ``root``) that
    names the workspace."""
    found = []
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, IsADirectoryError):
            continue  # images, checkpoints: no names in them
        for number, line in enumerate(text.splitlines(), 1):
            if OUTSIDE.search(line):
                found.append(f"{path.relative_to(root)}:{number}: {line.strip()}")
    return found


def heading_anchors(document: Path) -> set[str]:
    """The anchors GitHub gives the headings of ``document``: lower case, punctuation other than
    '-' and '_' dropped, spaces to '-'; a repeated anchor gets '-1', '-2', ..."""
    anchors: set[str] = set()
    for line in FENCE.sub("", document.read_text(encoding="utf-8")).splitlines():
        match = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        slug = re.sub(r"[^\w\- ]", "", match.group(1).lower()).replace(" ", "-")
        candidate, n = slug, 0
        while candidate in anchors:
            n += 1
            candidate = f"{slug}-{n}"
        anchors.add(candidate)
    return anchors


def broken_links(document: Path, root: Path = REPO) -> list[str]:
    """Links of ``document`` (outside code blocks) to a file or heading missing under ``root``."""
    broken = []
    for target in LINK.findall(FENCE.sub("", document.read_text(encoding="utf-8"))):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (document.parent / file_part).resolve() if file_part else document
        if not resolved.exists() or root.resolve() not in [resolved, *resolved.parents]:
            broken.append(f"{document.name}: {target} (no such file in the repository)")
        elif anchor and resolved.suffix == ".md" and anchor not in heading_anchors(resolved):
            broken.append(f"{document.name}: {target} (no such heading)")
    return broken


def markdown_documents() -> list[Path]:
    return [path for path in tracked_files() if path.suffix == ".md"]


def test_reference_data_is_intact_and_fully_listed():
    listed = {}
    for line in (REFDATA / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        listed[name] = digest
    on_disk = {
        str(path.relative_to(REFDATA))
        for path in REFDATA.rglob("*")
        if path.is_file() and path.name not in ("README.md", "SHA256SUMS")
    }
    assert on_disk == set(listed)
    for name, digest in listed.items():
        assert hashlib.sha256((REFDATA / name).read_bytes()).hexdigest() == digest, name


def test_no_tracked_file_names_the_development_workspace():
    assert outside_references(tracked_files()) == []


def test_the_workspace_check_finds_what_it_looks_for(tmp_path):
    leaky = tmp_path / "leaky.md"
    leaky.write_text("fsspec\nsee " + "../" + "shared/refdata\nas the " + "SP" + "EC says\nok\n")
    (tmp_path / "image.png").write_bytes(bytes(range(256)))
    found = outside_references([leaky, tmp_path / "image.png"], root=tmp_path)
    assert [entry.split(":")[1] for entry in found] == ["2", "3"]


def test_markdown_links_resolve_inside_the_repository():
    documents = markdown_documents()
    assert REPO / "README.md" in documents
    assert [link for document in documents for link in broken_links(document)] == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[ok](../README.md#title) [gone](nowhere.md)", ["nowhere.md"]),
        ("[ok](../README.md) [bad](../README.md#install)", ["../README.md#install"]),
        ("[head](#install) [bad](#no-such-heading)", ["#no-such-heading"]),
        ("[web](https://example.org/x)\n```\n[in code](missing.md)\n```", []),
        ("[out](../../../../../../etc/passwd)", ["../../../../../../etc/passwd"]),
    ],
)
def test_the_link_check_finds_broken_links(tmp_path, text, expected):
    (tmp_path / "README.md").write_text("# Title\n")
    document = tmp_path / "docs" / "guide.md"
    document.parent.mkdir()
    document.write_text(f"# Install\n\n{text}\n")
    found = broken_links(document, root=tmp_path)
    assert [entry.split(": ", 1)[1].split(" (")[0] for entry in found] == expected


def test_citation_and_both_commands_state_the_package_version():
    import yaml

    from ipt_data import __version__

    citation = yaml.safe_load((REPO / "CITATION.cff").read_text())
    assert citation["cff-version"] == "1.2.0"
    assert citation["version"] == __version__
    assert citation["references"][0]["title"] == "Pre-Trained Image Processing Transformer"
    for command in ("ipt-data", "ipt-train"):
        shown = subprocess.run(
            [BIN / command, "--version"], capture_output=True, text=True, check=True
        ).stdout
        assert shown.strip() == f"{command}, version {__version__}"
