"""Models: the paper's four at 200 classes, head-only training, local weights, clear errors."""

import pytest
import timm
import torch

from tiny_transformers.config import ModelConfig
from tiny_transformers.errors import ModelError
from tiny_transformers.models import build_model, count_parameters, head_modules
from tiny_transformers.paper import PAPER_MODELS
from tiny_transformers.weights import save_for_timm


@pytest.mark.parametrize("name", list(PAPER_MODELS))
def test_paper_models_have_the_paper_sizes_and_train_only_their_heads(name):
    with torch.device("meta"):  # shapes only: 650M parameters in all would take seconds to initialise
        model = build_model(ModelConfig(name=name, pretrained=False), num_classes=200, image_size=384)
    total, trainable = count_parameters(model)
    assert total / 1e6 == pytest.approx(PAPER_MODELS[name].params_millions, abs=0.1)
    head_params = {id(p) for head in head_modules(model) for p in head.parameters()}
    assert {id(p) for p in model.parameters() if p.requires_grad} == head_params
    assert trainable == sum(p.numel() for head in head_modules(model) for p in head.parameters())
    assert all(head.out_features == 200 for head in head_modules(model))
    assert model.pretrained_cfg["architecture"] == PAPER_MODELS[name].timm_name


def test_distilled_deit_resets_and_trains_both_heads():
    with torch.device("meta"):
        model = build_model(ModelConfig(name="deit_b_distilled", pretrained=False), 200, 384)
    assert [type(h).__name__ for h in head_modules(model)] == ["Linear", "Linear"]
    assert count_parameters(model)[1] == 2 * (768 * 200 + 200)


def test_full_mode_trains_everything_and_image_size_reaches_the_model():
    model = build_model(ModelConfig(name="test_vit", pretrained=False, train_mode="full"), 7, image_size=32)
    total, trainable = count_parameters(model)
    assert total == trainable
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 7)


def test_weights_file_and_exported_folder_load_with_their_head(tmp_path):
    source = build_model(ModelConfig(name="test_vit", pretrained=False), 5, image_size=32).eval()
    save_for_timm(source, tmp_path / "export", list("abcde"), list("ABCDE"), 32, (0.5,) * 3, (0.5,) * 3)
    x = torch.randn(3, 3, 32, 32)
    expected = source(x)
    for location in (tmp_path / "export", tmp_path / "export" / "model.safetensors"):
        loaded = build_model(ModelConfig(name="test_vit", checkpoint=str(location)), 5, image_size=32).eval()
        assert torch.equal(loaded(x), expected)
    # plain timm reads the same folder, class ids included
    plain = timm.create_model(f"local-dir:{tmp_path / 'export'}", pretrained=True).eval()
    assert torch.equal(plain(x), expected)
    # a checkpoint with another class count keeps the backbone and gets a fresh head
    other = build_model(ModelConfig(name="test_vit", checkpoint=str(tmp_path / "export")), 3, image_size=32)
    assert torch.equal(other.patch_embed.proj.weight, source.patch_embed.proj.weight)
    assert other.get_classifier().out_features == 3


def test_unknown_model_name_suggests_close_names():
    with pytest.raises(ModelError, match="Did you mean .*swin_l"):
        build_model(ModelConfig(name="swin_L", pretrained=False), 10, 32)


def test_pretrained_weights_offline_name_the_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="model.checkpoint .* or model.pretrained false"):
        build_model(ModelConfig(name="test_vit", pretrained=True), 10, 32)


def test_folder_of_another_architecture_is_refused(tmp_path):
    source = build_model(ModelConfig(name="test_vit", pretrained=False), 5, image_size=32)
    save_for_timm(source, tmp_path / "export", list("abcde"), list("abcde"), 32, (0.5,) * 3, (0.5,) * 3)
    with pytest.raises(ModelError, match="holds a 'test_vit' .* --model.name test_vit"):
        build_model(ModelConfig(name="test_vit2", checkpoint=str(tmp_path / "export")), 5, 32)


def test_export_config_names_the_class_count_once(tmp_path):
    """transformers' timm wrapper passes top-level num_classes and model_args together: one copy only."""
    import json

    source = build_model(ModelConfig(name="test_vit", pretrained=False), 5, image_size=32)
    save_for_timm(source, tmp_path / "export", list("abcde"), list("ABCDE"), 32, (0.5,) * 3, (0.5,) * 3)
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert config["num_classes"] == 5 and "num_classes" not in config["model_args"]
    assert config["model_args"]["img_size"] == [32, 32]
    assert config["label_names"] == list("abcde") and config["label_descriptions"] == dict(zip("abcde", "ABCDE"))
    assert config["pretrained_cfg"]["mean"] == [0.5] * 3 and config["pretrained_cfg"]["interpolation"] == "bicubic"


def test_a_plain_timm_folder_with_another_class_count_is_refused_not_scored_with_a_random_head(
    stanford_factory, tmp_path, capsys, monkeypatch
):
    """A best/ copy whose config.json lost the library's label fields, evaluated on data of 3 classes with its
    4-class head, or predicted with a config.json that claims 3: refused, never a fresh random head."""
    import json

    from tiny_transformers.cli import main

    source = build_model(ModelConfig(name="test_vit", pretrained=False), 4, image_size=32)
    folder = tmp_path / "best-copy"
    save_for_timm(source, folder, list("abcd"), list("ABCD"), 32, (0.5,) * 3, (0.5,) * 3)
    config = json.loads((folder / "config.json").read_text())
    for key in ("label_names", "label_descriptions", "tiny_transformers"):
        config.pop(key, None)
    (folder / "config.json").write_text(json.dumps(config))
    before = sorted(p.name for p in folder.iterdir())
    data = stanford_factory(tmp_path / "three", n_classes=3)
    monkeypatch.chdir(tmp_path)  # where evaluate would write its per-class CSV
    sentence = (
        f"error: The weights in '{folder / 'model.safetensors'}' have a head for 4 classes and 3 are expected here"
    )
    evaluate_options = ["--data.num_workers", "0", "--train.mixed_precision", "no"]  # fp32, as the other tests
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", "--model.checkpoint", str(folder), "--data.source", str(data), *evaluate_options])
    printed = capsys.readouterr()
    assert exit_.value.code == 2
    assert printed.err.startswith(sentence) and "Traceback" not in printed.err
    assert printed.out == "" and sorted(p.name for p in folder.iterdir()) == before
    assert not list(tmp_path.glob("*.csv"))  # no scores of a random head anywhere

    config["num_classes"] = 3  # config.json and the weights disagree: the weights' head decides
    (folder / "config.json").write_text(json.dumps(config))
    image = next((data / "val" / "images").iterdir())
    with pytest.raises(SystemExit) as exit_:
        main(["predict", "--model.checkpoint", str(folder), str(image)])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.startswith(sentence)
