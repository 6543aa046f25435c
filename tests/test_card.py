"""The model card names the data the run saw: a Hub id only when it trained on one, never Tiny ImageNet's Hub copy
for a local folder."""

import dataclasses

import pytest
import yaml

from tiny_transformers.card import model_card
from tiny_transformers.cli import main
from tiny_transformers.config import HubConfig
from tiny_transformers.rundir import read_run

from .test_finetune import tiny_config


def front_matter(card_text: str) -> dict:
    assert card_text.startswith("---\n")
    return yaml.safe_load(card_text.split("---\n", 2)[1])


@pytest.fixture(scope="module")
def local_run(stanford_dir, tmp_path_factory):
    """A one-epoch run on the local Stanford fixture, exported with `tiny-transformers export`."""
    from tiny_transformers import finetune

    out = tmp_path_factory.mktemp("card") / "out"
    finetune(tiny_config(stanford_dir, out, epochs=1))
    main(["export", str(out)])  # returns (exit status 0)
    assert (out / "export" / "README.md").is_file()
    return out


def test_a_run_on_local_data_claims_no_hub_dataset_and_no_model_index(local_run):
    card_text = (local_run / "export" / "README.md").read_text()
    meta = front_matter(card_text)
    assert "datasets" not in meta and "model-index" not in meta
    assert "zh-plus" not in card_text and "Tiny ImageNet validation" not in card_text
    assert meta["metrics"] == ["accuracy"] and meta["library_name"] == "timm"
    assert "on the eval split of `…/tiny-imagenet-200` (local data, so the metadata names no dataset" in card_text
    assert "--data.source path/to/your/data" in card_text  # the usage snippet: the reader's own copy
    assert "tiny-imagenet" not in meta["tags"]  # 4 classes in the Stanford layout: not Tiny ImageNet itself


def test_the_tiny_imagenet_tag_is_for_tiny_imagenet_only(local_run):
    """The Hub copy, or 200 classes named by WordNet ids in any layout, is Tiny ImageNet; other data is not."""
    run = read_run(local_run)
    wnids = [f"n{i:08d}" for i in range(200)]
    cases = [(run, False), (dataclasses.replace(run, class_ids=wnids), True)]
    data = dataclasses.replace(run.config.data, source="zh-plus/tiny-imagenet")  # trained on the Hub copy
    hub_run = dataclasses.replace(run, source_kind="hub", config=dataclasses.replace(run.config, data=data))
    cases.append((hub_run, True))
    for case, tagged in cases:
        assert ("tiny-imagenet" in front_matter(str(model_card(case)))["tags"]) is tagged


def test_a_run_on_a_hub_dataset_names_it_in_the_metadata_and_the_usage(local_run):
    run = dataclasses.replace(read_run(local_run), source_kind="hub")  # as a run on a Hub dataset records it
    for source, name in (("zh-plus/tiny-imagenet", "Tiny ImageNet"), ("me/flowers", "me/flowers")):
        run.config.data.source = source  # the same run, described as trained on that Hub dataset
        card = model_card(run, HubConfig(model_id="tester/tiny-vit"))
        meta = front_matter(str(card))
        assert meta["datasets"] == [source]
        (entry,) = meta["model-index"]
        (result,) = entry["results"]
        assert result["dataset"] == {"name": name, "type": source, "split": "validation"}
        assert [m["value"] for m in result["metrics"]] == [round(run.history[-1][k], 2) for k in ("top1", "top5")]
        assert (
            f"tiny-transformers evaluate --model.checkpoint hf-hub:tester/tiny-vit --data.source {source}" in card.text
        )
        assert "the `model-index` above reports the final row" in card.text


def test_a_local_folder_named_like_a_hub_id_stays_local_data_wherever_it_is_exported(
    stanford_dir, tmp_path, monkeypatch
):
    """`--data.source tiny-imagenet-200` (a bare relative folder name, also a valid Hub id) trained in one folder and
    exported from another, where no such folder exists: the card still names no Hub dataset, as the run recorded."""
    from tiny_transformers import finetune

    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "tiny-imagenet-200").symlink_to(stanford_dir)
    monkeypatch.chdir(tmp_path / "work")
    finetune(tiny_config("tiny-imagenet-200", tmp_path / "out", epochs=1))
    monkeypatch.chdir(tmp_path)
    main(["export", str(tmp_path / "out")])
    card_text = (tmp_path / "out" / "export" / "README.md").read_text()
    meta = front_matter(card_text)
    assert "datasets" not in meta and "model-index" not in meta
    assert "--data.source path/to/your/data" in card_text and "`…/tiny-imagenet-200` (local data" in card_text
