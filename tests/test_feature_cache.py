"""Head mode's feature cache (train.cache_features, features.py): each backbone feature computed once per run, and
every score, loss and trained weight bitwise what the uncached run gives, on 1 and 2 processes, fp32 and bf16, with
an EMA, ragged batches, and across a SIGKILL and resume (on 2 processes)."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file
from timm.models.vision_transformer import VisionTransformer

from tiny_transformers import finetune
from tiny_transformers.config import AugmentConfig, FinetuneConfig, ModelConfig, paper_config
from tiny_transformers.features import FeatureCache, TrainFeatures, capture_head_inputs, head_logits, training_cache_off
from tiny_transformers.models import build_model
from tiny_transformers.plan import Plan
from tiny_transformers.sampler import MicroBatchSampler

sys.path.insert(0, str(Path(__file__).parent))
from test_backbone import head_config, untimed  # noqa: E402
from test_resilience import ENV, checkpoints, kill, start, wait_for  # noqa: E402, F401

PROBE = AugmentConfig(mixup_alpha=0.0, cutmix_alpha=0.0, random_erasing=0.0, randaugment_ops=0)


def probe_config(source, output_dir, cache: bool, **train) -> FinetuneConfig:
    """head_config as a linear probe (nothing random before the head), with an EMA: training features are kept."""
    config = head_config(
        source, output_dir, model={"drop_path_rate": 0.0}, cache_features=cache, ema_decay=0.9, **train
    )
    config.augment = PROBE
    return config


def last_weights(output_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(output_dir / "last" / "model.safetensors")


def assert_same_run(a: Path, b: Path) -> None:
    """Two run folders: the same metrics.jsonl (but the seconds) and bitwise the same last/ and best/ weights."""
    lines = [untimed([json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]) for d in (a, b)]
    assert lines[0] == lines[1]
    for folder in ("last", "best"):
        x, y = (load_file(d / folder / "model.safetensors") for d in (a, b))
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), folder


@pytest.fixture
def backbone_calls(monkeypatch):
    """How many batches went through the ViT backbone, in training and in evaluation mode (the meta-device shape
    check before the data loads is not a batch)."""
    calls = {"train": 0, "eval": 0}
    own = VisionTransformer.forward_features

    def counted(self, x, *args, **kwargs):
        if x.device.type != "meta":
            calls["train" if self.training else "eval"] += 1
        return own(self, x, *args, **kwargs)

    monkeypatch.setattr(VisionTransformer, "forward_features", counted)
    return calls


@pytest.mark.parametrize("precision, micro_batch", [("no", 5), ("bf16", 4)])
def test_a_probe_computes_each_feature_once_and_trains_bitwise_the_same(
    precision, micro_batch, stanford_dir, tmp_path, backbone_calls, bf16_process, capsys
):
    """3 epochs over 24 training images in micro-batches of 5 (a ragged one of 4 per epoch) or 4 (none), 12
    evaluation images in batches of the same size, raw weights and EMA evaluated each epoch."""
    settings = dict(epochs=3, mixed_precision=precision, batch_size=micro_batch, micro_batch_size=micro_batch)
    uncached = finetune(probe_config(stanford_dir, tmp_path / "off", False, **settings))
    assert (
        "feature cache: off (train.cache_features false): every feature computed every time" in capsys.readouterr().out
    )
    steps, batches = -(-24 // micro_batch), -(-12 // micro_batch)
    assert backbone_calls == {"train": 3 * steps, "eval": 3 * batches * 2 + 1}  # + the report's prediction grid
    backbone_calls.update(train=0, eval=0)
    config = probe_config(stanford_dir, tmp_path / "on", True, **settings)
    cached = finetune(config)
    assert "feature cache: evaluation features computed once per run; training features too" in capsys.readouterr().out
    # evaluation: the first pass only; training: the micro-batches with an image not yet kept from a full one
    assert backbone_calls == {"train": uncached_micro_batches(config, train_samples=24), "eval": batches + 1}
    if micro_batch == 4:  # no ragged micro-batch: the 3 epochs cost one backbone pass
        assert backbone_calls["train"] == steps
    assert untimed(cached.history) == untimed(uncached.history)
    assert_same_run(cached.output_dir, uncached.output_dir)


def uncached_micro_batches(config: FinetuneConfig, train_samples: int) -> int:
    """The micro-batches of a run that go through the backbone with the training cache (features.TrainFeatures):
    a ragged one always, a full one when any of its images was never in a full one before."""
    plan = Plan.build(config, 1, train_samples)
    sampler, kept, count = MicroBatchSampler(plan, 0, config.train.seed, 0), set(), 0
    for epoch in range(config.train.epochs):
        sampler.move_to(epoch)
        for batch in sampler:
            full = len(batch) == plan.micro_batch_size
            count += not (full and kept.issuperset(batch))
            kept |= set(batch) if full else set()
    return count


def test_with_augmentation_only_the_evaluation_is_cached_and_scores_the_same(
    stanford_dir, tmp_path, backbone_calls, bf16_process, capsys
):
    """The paper's augmentation (Mixup, CutMix, random erasing, drop path) keeps training uncached; the evaluation
    features are still computed once, for the raw weights and the EMA alike."""
    runs = {}
    for cache in (False, True):
        backbone_calls.update(train=0, eval=0)
        runs[cache] = finetune(head_config(stanford_dir, tmp_path / str(cache), cache_features=cache, ema_decay=0.9))
        assert backbone_calls["train"] == 2 * 5
    assert backbone_calls["eval"] == 3 + 1  # and the report's grid; uncached: 2 epochs x 3 batches x (raw, EMA) + 1
    assert (
        "feature cache: evaluation features computed once per run; training features every step (Mixup/CutMix is on; "
        "train.cache_features needs no augmentation before the head)"
    ) in capsys.readouterr().out
    assert untimed(runs[True].history) == untimed(runs[False].history)
    assert_same_run(runs[True].output_dir, runs[False].output_dir)


@pytest.mark.parametrize(
    "name, size",
    [
        ("test_vit", 32),
        ("deit_tiny_distilled_patch16_224", 32),  # two heads, each on its own token
        ("cait_xxs24_224", 32),
        ("swin_tiny_patch4_window7_224", 224),  # the head's pooling is frozen: its fc sees pooled features
    ],
)
def test_the_head_alone_on_the_kept_inputs_gives_the_models_output_bitwise(name, size):
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=name, pretrained=False), 7, size)
    x = torch.randn(3, 3, size, size)
    for training in (False, True):
        model.train(training)
        torch.manual_seed(1)
        with torch.no_grad(), capture_head_inputs(model) as captured:
            output = model(x)
        with torch.no_grad():
            assert torch.equal(head_logits(model, captured.features()), output), (name, training)


def test_what_turns_the_training_cache_off():
    config = paper_config("vit_l")
    assert training_cache_off(config) == "augment.randaugment_ops is 2"
    config.augment = PROBE
    assert training_cache_off(config) == "model.drop_path_rate is 0.1"
    config.model.drop_path_rate = 0.0
    assert training_cache_off(config) is None
    config.augment = dataclasses.replace(PROBE, random_erasing=0.25)
    assert training_cache_off(config) == "augment.random_erasing is 0.25"
    config.augment = dataclasses.replace(PROBE, mixup_alpha=0.8, mixup_prob=0.0)  # Mixup that never mixes
    assert training_cache_off(config) is None
    # dropout inside the backbone is found on the model itself
    config.augment, config.model.name, config.model.pretrained = PROBE, "test_vit", False
    model = timm.create_model("test_vit", pretrained=False, num_classes=4, proj_drop_rate=0.1)
    cache, line = FeatureCache.for_run(config, model, train_samples=24, micro_batch_size=4)
    assert cache is not None and cache.train is None
    assert "training features every step (the backbone has random or batch-dependent layers in training (" in line
    config.model.train_mode = "full"
    assert FeatureCache.for_run(config, model, 24, 4) == (
        None,
        "feature cache: off (full mode): every feature computed every time",
    )


def test_a_model_whose_output_is_not_its_heads_is_not_cached(stanford_dir, tmp_path, monkeypatch, capsys, bf16_process):
    """A family whose forward does more after the head (here: a scaled output) gets no cache, says so, and still
    scores and trains what the uncached run does."""
    reference = finetune(probe_config(stanford_dir, tmp_path / "off", False, mixed_precision="no", epochs=1))
    own = VisionTransformer.forward_head
    monkeypatch.setattr(VisionTransformer, "forward_head", lambda self, x, pre_logits=False: own(self, x) * 2)
    scaled = finetune(probe_config(stanford_dir, tmp_path / "scaled-off", False, mixed_precision="no", epochs=1))
    capsys.readouterr()
    cached = finetune(probe_config(stanford_dir, tmp_path / "scaled-on", True, mixed_precision="no", epochs=1))
    err = capsys.readouterr().err
    assert err.count("warning: train.cache_features: this model's output is not its head's output") == 2
    assert untimed(cached.history) == untimed(scaled.history) != untimed(reference.history)


ROOT = Path(__file__).resolve().parents[1]


def launch(source: Path, out: Path, processes: int, *extra: str) -> list[str]:
    """The vit_l recipe as a tiny linear probe with an EMA: 38 training images in micro-batches of 4 (a ragged
    last one of 2), 11 evaluation images (on 2 processes the last batch is padded with a duplicate)."""
    layout = ["--multi_gpu", "--main_process_port", "0"] if processes > 1 else []  # 0: a free port
    return [
        sys.executable, "-m", "accelerate.commands.launch", *layout, "--num_processes", str(processes),
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(ROOT / "recipes" / "vit_l.py"),
        "--model.name", "test_vit", "--model.pretrained", "false", "--model.drop_path_rate", "0",
        "--augment.randaugment_ops", "0", "--augment.mixup_alpha", "0", "--augment.cutmix_alpha", "0",
        "--augment.random_erasing", "0", "--data.source", str(source), "--data.image_size", "32",
        "--data.num_workers", "0", "--data.max_train_samples", "38", "--data.max_eval_samples", "11",
        "--data.drop_last", "false", "--train.epochs", "3", "--train.batch_size", "8", "--train.micro_batch_size", "4",
        "--train.ema_decay", "0.9", "--train.output_dir", str(out), "--train.progress", "false", *extra,
    ]  # fmt: skip


def launched(*args: object, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(launch(*args), capture_output=True, text=True, env=ENV, timeout=600, **kwargs)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def probe_data(data_tools, tmp_path_factory):
    return data_tools.make_stanford(tmp_path_factory.mktemp("probe"), n_train=10, n_val=3)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_two_processes_cached_and_uncached_give_the_same_scores_and_weights_also_when_killed_and_resumed(
    probe_data, tmp_path, precision
):
    """The recipe on 2 processes, cached and uncached: bitwise the same run. In fp32 (precision no: the evaluation in
    fp32 too) the cached run is SIGKILLed into its second epoch, when the training cache is in use, and resumed: the
    cache is never in a checkpoint, so the resumed processes compute the features again and end bitwise where the
    uninterrupted uncached run does."""
    runs, settings = {}, ("--train.mixed_precision", precision, "--train.eval_precision", "autocast")
    for cache in ("false", "true"):
        out = tmp_path / cache
        extra = (*settings, "--train.cache_features", cache)
        if cache == "true" and precision == "no":
            extra += ("--train.checkpoint_every", "1", "--train.keep_checkpoints", "100")
            argv = launch(probe_data, out, 2, *extra)
            pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
            process = subprocess.Popen(argv, **pipes, text=True, env=ENV, start_new_session=True)
            wait_for(lambda out=out: len(checkpoints(out)) >= 7, process)  # into epoch 2: the training cache is in use
            kill(process)
        done = launched(probe_data, out, 2, *extra)
        assert ("resuming from step_" in done.stdout) == (cache == "true" and precision == "no")
        assert "2 process(es) x micro-batch 4 x 1 accumulation step(s)" in done.stdout
        assert ("training features too, in the first epoch" in done.stdout) == (cache == "true")
        runs[cache] = out
    assert_same_run(runs["true"], runs["false"])


@pytest.mark.slow
def test_the_benchmark_runs_the_recipe_with_and_without_the_cache_and_compares_the_scores(tmp_path, capsys):
    """benchmarks/feature_cache.py, tiny: the real recipe launched off then on, as a probe (so both caches act);
    the runs' scores compared and the ratio is of the runs' own timings (never asserted as a speed)."""
    from benchmarks.feature_cache import main as feature_cache

    variant = "model.name=test_vit data.image_size=32 train.micro_batch_size=8 train.batch_size=16"
    variant += " train.mixed_precision=bf16 augment.randaugment_ops=0 model.drop_path_rate=0 augment.mixup_alpha=0"
    variant += " augment.cutmix_alpha=0 augment.random_erasing=0"
    args = ["--data", str(tmp_path / "set"), "--output-dir", str(tmp_path / "runs"), "--classes", "3"]
    args += ["--train-per-class", "16", "--val-per-class", "2", "--epochs", "2", "--variant", variant]
    result = feature_cache([*args, "--json", str(tmp_path / "cache.json")])
    assert result["same_scores"] is True
    (off,), (on,) = result["runs"]["false"], result["runs"]["true"]
    assert len(off["scores"]) == len(on["scores"]) == 2 and off["scores"] == on["scores"]
    assert "--train.cache_features true" in on["command"] and "--train.cache_features false" in off["command"]
    assert result["process_ratio"] == pytest.approx(on["process_seconds"] / off["process_seconds"])
    assert result["epochs_ratio"] == pytest.approx(on["epoch_seconds"] / off["epoch_seconds"])
    assert json.loads((tmp_path / "cache.json").read_text())["same_scores"] is True
    assert "same metrics.jsonl scores: True" in capsys.readouterr().out


@pytest.mark.parametrize("device_full", [False, True])
def test_training_features_are_kept_by_image_and_served_only_to_full_micro_batches(monkeypatch, device_full):
    """TrainFeatures: a full micro-batch's head inputs kept under each image's row, served to a later full
    micro-batch whose images are all kept (in its own order), never to a ragged one; where the device has no room
    for the store, it lives in host memory and serves the same values."""
    if device_full:

        def no_room(self, *args, **kwargs):
            raise torch.OutOfMemoryError("no room")

        monkeypatch.setattr(torch.Tensor, "new_empty", no_room)
    model = timm.create_model("test_vit", pretrained=False, num_classes=3, img_size=32).eval()
    cache, images = TrainFeatures(train_samples=6, micro_batch_size=2), torch.randn(6, 3, 32, 32)
    outputs = {}
    for batch in ([4, 1], [0, 5], [2]):  # the last is ragged
        with torch.no_grad(), capture_head_inputs(model) as captured:
            outputs[tuple(batch)] = model(images[batch])
            cache.keep(model, batch, captured, outputs[tuple(batch)])
    assert cache.filled.tolist() == [True, True, False, False, True, True]
    assert cache.lookup([2]) is None and cache.lookup([2, 0]) is None and cache.lookup([3]) is None
    (served,) = cache.lookup([5, 4])
    with torch.no_grad(), capture_head_inputs(model) as captured:
        model(images[[0, 5]])
    assert torch.equal(served[0], captured.features()[0][1])  # image 5, as its full micro-batch computed it
    assert served.dtype == torch.float32 and [tuple(store.shape) for store in cache.store] == [(6, 64)]
