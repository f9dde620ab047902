"""Links between the documents resolve: every ``[text](file.md#anchor)`` names an existing file
and one of its headings (GitHub's anchors), so a figure a document points to is really there."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = [REPO / "README.md", REPO / "bundle" / "docs" / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def _anchors(path: Path) -> set[str]:
    headings = re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", path.read_text(), flags=re.S), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_markdown_links_to_documents_and_their_sections_resolve():
    broken = []
    for doc in DOCUMENTS:
        for target, anchor in re.findall(r"\]\(([\w./-]*\.md)?(?:#([\w-]+))?\)", doc.read_text()):
            path = (doc.parent / target).resolve() if target else doc
            if not path.is_file():
                broken.append(f"{doc.relative_to(REPO)}: {target} not found")
            elif anchor and anchor not in _anchors(path):
                broken.append(f"{doc.relative_to(REPO)}: no section #{anchor} in {path.relative_to(REPO)}")
    assert not broken, broken


def test_documented_bundle_zips_are_the_current_version():
    """The download commands the READMEs show name the zip scripts/package_bundle.py writes now."""
    import json

    version = json.loads((REPO / "bundle" / "configs" / "metadata.json").read_text())["version"]
    named = {doc: re.findall(r"maht_net_cephalometric_v([0-9.]+[0-9])\.zip", (REPO / doc).read_text()) for doc in ("README.md", "bundle/docs/README.md")}
    assert all(named.values()) and {v for found in named.values() for v in found} == {version}, named
