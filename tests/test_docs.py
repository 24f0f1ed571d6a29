"""The first page and the docs stay true (issue 28): README under 250 lines with its two
commands and a `pip install` line; every repository path the docs name exists; the MkDocs
site builds strictly (scripts/test.sh also builds it before the tests)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# A path into the repository, as the docs write them: `tests/test_x.py`, scripts/demo.sh.
_PATH = re.compile(r"(?<![\w./-])((?:tfsubmit|tests|benchmarks|scripts|examples|deployments|"
                   r"docs)/[\w./-]*[\w/])")


def test_readme_is_a_first_page():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) < 250
    for needed in ("./scripts/demo.sh", "./scripts/test.sh", "pip install .",
                   "tfsubmit tensorboard", "tfsubmit.azureml.core"):
        assert needed in text, needed


def test_every_repository_path_the_docs_name_exists():
    missing = []
    for page in PAGES:
        for path in _PATH.findall(page.read_text()):
            clean = path.rstrip(".")
            if "*" in clean or "<" in clean or clean.endswith(("/N", "-N")):
                continue
            if not (ROOT / clean).exists() and not (ROOT / "docs" / clean).exists():
                missing.append(f"{page.name}: {clean}")
    assert not missing, missing


def test_docs_links_are_relative_and_resolve():
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if target.startswith(("http://", "https://", "data:", "mailto:")):
                continue
            assert (page.parent / target).exists(), f"{page.name}: {target}"


def test_the_site_builds_strictly(tmp_path):
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d",
                           str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "site" / "serving" / "index.html").is_file()
