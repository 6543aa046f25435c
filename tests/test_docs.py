"""The docs describe the code as it is: every config field documented, every linked file present."""

import dataclasses
import re
from pathlib import Path

import pytest

from tiny_transformers import FinetuneConfig

ROOT = Path(__file__).resolve().parents[1]


def dotted_fields() -> list[str]:
    config = FinetuneConfig()
    return [
        f"{section.name}.{field.name}"
        for section in dataclasses.fields(config)
        for field in dataclasses.fields(getattr(config, section.name))
    ]


@pytest.mark.parametrize("name", dotted_fields())
def test_every_config_field_is_in_the_reference(name):
    assert f"`{name}`" in (ROOT / "docs" / "config.md").read_text()


@pytest.mark.parametrize("document", ["README.md", *sorted(p.name for p in (ROOT / "docs").glob("*.md"))])
def test_relative_links_point_at_files_that_exist(document):
    path = ROOT / document if document == "README.md" else ROOT / "docs" / document
    for target in re.findall(r"\]\((?!https?://|#)([^)#]+)", path.read_text()):
        assert (path.parent / target).exists(), f"{document} links to missing {target}"


def test_readme_commands_name_real_recipes():
    for recipe in re.findall(r"recipes/(\w+)\.py", (ROOT / "README.md").read_text()):
        assert (ROOT / "recipes" / f"{recipe}.py").is_file(), recipe
