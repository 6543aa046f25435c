"""Long runs on rented machines: pushes in the background that never stall training, and the training checkpoint
on the Hub (hub.strategy checkpoint) resumed on a fresh machine (train.resume hf-hub:owner/name or hub).

The Hub is a local folder (:class:`FakeHub`): ``HfApi`` and ``snapshot_download`` are replaced in hub.py, the only
module that talks to the Hub. A run is "killed" in-process by raising from ``train_steps`` at a chosen step.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx2
import pytest
import torch
from huggingface_hub.utils import filter_repo_objects
from safetensors.torch import load_file

import tiny_transformers.hub as hub
import tiny_transformers.push_staging as push_staging
import tiny_transformers.train as train_module
from tiny_transformers import DataConfig, FinetuneConfig, ModelConfig, TrainConfig, finetune
from tiny_transformers.config import HubConfig
from tiny_transformers.errors import CheckpointError, ConfigError
from tiny_transformers.publish import EXPORT_FILES, BackgroundPublisher, push_run
from tiny_transformers.train import TrainingInterrupted
from tiny_transformers.validation import validate

MODEL_ID = "tester/tiny-vit-resumable"
EPOCHS, STEPS_PER_EPOCH = 3, 3  # 24 fixture images, effective batch 8


class FakeHub:
    """A folder per repo under ``root``. ``upload_folder`` sends what the real one sends (the folder's files
    filtered by allow_patterns), deletes the repo files matching delete_patterns that it does not upload again, and
    commits atomically as the Hub does: the new tree is built beside the repo and swapped in, so a failure midway
    (``fail_uploads``: the upload numbers that fail after writing half their files) leaves the repo as it was.
    ``snapshot_download`` copies the files matching allow_patterns into local_dir. ``gates``: upload number -> an
    event that upload waits for (at most a minute) before it commits; ``uploading`` is set when an upload starts."""

    def __init__(
        self,
        root: Path,
        upload_seconds: float = 0.0,
        fail_uploads: tuple[int, ...] = (),
        gates: dict[int, threading.Event] | None = None,
    ) -> None:
        self.root, self.upload_seconds, self.fail_uploads, self.gates = root, upload_seconds, fail_uploads, gates or {}
        self.uploads: list[dict] = []  # one per upload_folder call: its files, start and end times, outcome
        self.uploading = threading.Event()

    def __call__(self, **kwargs) -> "FakeHub":  # HfApi(...)
        return self

    def repo(self, repo_id: str) -> Path:
        return self.root / repo_id

    def files(self, repo_id: str) -> list[str]:
        folder = self.repo(repo_id)
        return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())

    def create_repo(self, repo_id, **kwargs):
        self.repo(repo_id).mkdir(parents=True, exist_ok=True)
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, *, repo_id, folder_path, allow_patterns=None, delete_patterns=None, **kwargs):
        record = {"started": time.perf_counter(), "message": kwargs.get("commit_message"), "ok": False}
        self.uploads.append(record)
        number = len(self.uploads)
        self.uploading.set()
        folder, repo = Path(folder_path), self.repo(repo_id)
        local = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        sent = sorted(filter_repo_objects(local, allow_patterns=allow_patterns))
        record["sent"] = sent
        staging = repo.with_name(f".{repo.name}.commit")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(repo, staging)
        for name in filter_repo_objects(self.files(repo_id), allow_patterns=delete_patterns or []):
            if name not in sent:
                (staging / name).unlink()
        failing = number in self.fail_uploads
        for index, name in enumerate(sent):
            if failing and index == len(sent) // 2:
                record["ended"] = time.perf_counter()
                raise ConnectionError("Connection reset by peer")  # the commit never happens: the repo is as it was
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(folder / name, staging / name)
        time.sleep(self.upload_seconds)
        if number in self.gates:  # held open until the test's event: False when it never came
            record["held"] = self.gates[number].wait(60)
        old = repo.with_name(f".{repo.name}.old")
        repo.rename(old)
        staging.rename(repo)
        shutil.rmtree(old)
        record.update(ended=time.perf_counter(), ok=True)
        return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/{len(self.uploads)}"})()

    def snapshot_download(self, repo_id, *, allow_patterns=None, local_dir=None, **kwargs):
        repo = self.repo(repo_id)
        if not repo.is_dir():
            request = httpx2.Request("GET", f"https://huggingface.co/api/models/{repo_id}")
            raise hub.hf_errors.RepositoryNotFoundError(
                "404 Repository Not Found", response=httpx2.Response(404, request=request)
            )
        for name in filter_repo_objects(self.files(repo_id), allow_patterns=allow_patterns):
            (Path(local_dir) / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(repo / name, Path(local_dir) / name)
        return str(local_dir)

    def install(self, patch: pytest.MonkeyPatch) -> None:
        patch.setattr(hub, "HfApi", self)
        patch.setattr(hub, "snapshot_download", self.snapshot_download)


class Killed(BaseException):
    """Stands in for SIGKILL: nothing in the library catches it."""


def epoch_events() -> list[threading.Event]:
    return [threading.Event() for _ in range(EPOCHS)]


def killing_at(step: int | None, epoch_started: list[threading.Event], killed: threading.Event | None = None):
    """train_steps that sets the next of ``epoch_started`` when an epoch's steps start and raises :class:`Killed`
    after update ``step``, setting ``killed`` first."""
    real = train_module.train_steps

    def steps(run, loader):
        next(event for event in epoch_started if not event.is_set()).set()
        for item in real(run, loader):
            if run.state.global_step == step:
                if killed is not None:
                    killed.set()
                raise Killed
            yield item

    return steps


def terminated_at(step: int):
    """train_steps that sends this process SIGTERM (a preemption) right after update ``step``."""
    real = train_module.train_steps

    def steps(run, loader):
        for item in real(run, loader):
            if run.state.global_step == step:
                os.kill(os.getpid(), signal.SIGTERM)
            yield item

    return steps


def config_for(source, output_dir, resume="auto", **hub_fields) -> FinetuneConfig:
    """test_vit at 32 px with an EMA (its custom_checkpoint_0.pkl travels too), 3 epochs of 3 updates."""
    return FinetuneConfig(
        model=ModelConfig(name="test_vit", pretrained=False, train_mode="full"),
        data=DataConfig(source=str(source), image_size=32, num_workers=0),
        train=TrainConfig(
            epochs=EPOCHS,
            batch_size=8,
            micro_batch_size=4,
            mixed_precision="no",
            output_dir=str(output_dir),
            progress=False,
            ema_decay=0.9,
            resume=resume,
        ),
        hub=HubConfig(**hub_fields),
    )


def pushed(resume: str = "auto", **extra) -> dict:
    return {"push": True, "model_id": MODEL_ID, "strategy": "checkpoint", **extra}


def assert_same_weights(out: Path, reference: Path) -> None:
    for folder in ("last", f"checkpoints/step_{EPOCHS * STEPS_PER_EPOCH:08d}"):
        actual, expected = (
            load_file(out / folder / "model.safetensors"),
            load_file(reference / folder / "model.safetensors"),
        )
        assert actual.keys() == expected.keys()
        assert all(torch.equal(actual[k], expected[k]) for k in expected), folder


def resumed_from_hub(fake: FakeHub, source: Path, out: Path, capsys: pytest.CaptureFixture) -> str:
    """Train in the empty folder ``out`` from the checkpoint on the fake Hub (another machine); what it printed."""
    with pytest.MonkeyPatch.context() as patch:
        fake.install(patch)
        finetune(config_for(source, out, resume=f"hf-hub:{MODEL_ID}"))
    return capsys.readouterr().out


def hub_step(fake: FakeHub) -> int:
    return json.loads((fake.repo(MODEL_ID) / "last-checkpoint" / "trainer_state.json").read_text())["state"][
        "global_step"
    ]


@pytest.fixture(scope="module")
def reference(stanford_dir, tmp_path_factory):
    """The uninterrupted run, without any push."""
    out = tmp_path_factory.mktemp("reference") / "out"
    return finetune(config_for(stanford_dir, out))


@pytest.fixture(scope="module")
def killed_run(stanford_dir, tmp_path_factory):
    """hub.strategy checkpoint, killed at the second update of epoch 3. The upload after epoch 1 commits only once
    epoch 2's steps have started (a run that waited for it would never get there), the one after epoch 2 only once
    the kill came: leaving the run waits for it, as finish() does."""
    root = tmp_path_factory.mktemp("killed")
    epoch_started, killed = epoch_events(), threading.Event()
    fake = FakeHub(root / "hub", gates={1: epoch_started[1], 2: killed})
    with pytest.MonkeyPatch.context() as patch:
        fake.install(patch)
        patch.setattr(train_module, "train_steps", killing_at(2 * STEPS_PER_EPOCH + 2, epoch_started, killed))
        with pytest.raises(Killed):
            finetune(config_for(stanford_dir, root / "A", **pushed()))
    return fake, root


def test_pushes_run_in_the_background_and_carry_the_checkpoint(killed_run):
    fake, root = killed_run
    first, second = fake.uploads
    assert first["ok"] and second["ok"]
    # the run did not wait for the upload after epoch 1: epoch 2's steps started while it was still uploading; the
    # push after epoch 2 was asked for (and started) only after the first ended (one upload in flight), and still
    # uploading at the kill, it was waited for
    assert first["held"] and second["held"]
    assert second["started"] >= first["ended"]
    checkpoint_files = [name for name in second["sent"] if name.startswith("last-checkpoint/")]
    assert sorted(set(second["sent"]) - set(checkpoint_files)) == sorted(EXPORT_FILES)
    expected = {"trainer_state.json", "model.safetensors", "optimizer.bin", "custom_checkpoint_0.pkl"}  # EMA: .pkl
    assert {f"last-checkpoint/{name}" for name in expected} <= set(checkpoint_files)
    # replaced, not accumulated: the repo holds epoch 2's checkpoint only, byte for byte the local one
    assert hub_step(fake) == 2 * STEPS_PER_EPOCH
    local = root / "A" / "checkpoints" / f"step_{2 * STEPS_PER_EPOCH:08d}"
    repo_checkpoint = fake.repo(MODEL_ID) / "last-checkpoint"
    assert sorted(p.name for p in repo_checkpoint.iterdir()) == sorted(p.name for p in local.iterdir())
    assert all((repo_checkpoint / p.name).read_bytes() == p.read_bytes() for p in local.iterdir())
    assert not (root / "A" / ".hub-push").exists()  # the snapshots are gone, the run's own files are not


def test_resume_from_the_hub_on_a_fresh_machine_ends_with_the_same_weights(killed_run, reference, stanford_dir, capsys):
    fake, root = killed_run
    fresh = root / "B"  # another machine: nothing of run A on disk, only the Hub
    with pytest.MonkeyPatch.context() as patch:
        fake.install(patch)
        result = finetune(config_for(stanford_dir, fresh, resume="hub", **pushed()))
    out = capsys.readouterr().out
    assert f"downloaded The Hub checkpoint 'hf-hub:{MODEL_ID}' (last-checkpoint/, step 6) into " in out
    assert "resuming from step_00000006: epoch 3, step 0" in out
    assert result.epochs_completed == EPOCHS
    assert [h["top1"] for h in result.history] == [h["top1"] for h in reference.history]
    assert_same_weights(fresh, reference.output_dir)
    assert hub_step(fake) == EPOCHS * STEPS_PER_EPOCH  # the end-of-training push replaced last-checkpoint/ again


def test_an_interrupted_push_leaves_the_previous_checkpoint_and_resume_uses_it(
    stanford_dir, reference, tmp_path, capsys
):
    fake = FakeHub(tmp_path / "hub", fail_uploads=(2,))  # the push after epoch 2 dies mid-upload
    with pytest.MonkeyPatch.context() as patch:
        fake.install(patch)
        patch.setattr(train_module, "train_steps", killing_at(2 * STEPS_PER_EPOCH + 1, epoch_events()))
        with pytest.raises(Killed):
            finetune(config_for(stanford_dir, tmp_path / "A", **pushed()))
    err = capsys.readouterr().err
    assert f"warning: Pushing '{tmp_path / 'A'}' to the Hub as '{MODEL_ID}' failed: the Hub could not be reached" in err
    assert (
        f"retry with: tiny-transformers push {tmp_path / 'A'} --hub.model_id {MODEL_ID} --hub.strategy checkpoint"
        in err
    )
    assert [u["ok"] for u in fake.uploads] == [True, False]
    assert hub_step(fake) == STEPS_PER_EPOCH  # epoch 1's checkpoint, whole: the failed commit changed nothing
    assert (tmp_path / "A" / "checkpoints" / f"step_{2 * STEPS_PER_EPOCH:08d}" / "trainer_state.json").is_file()
    assert sorted(p.name for p in (tmp_path / "A" / "export").iterdir()) == sorted(EXPORT_FILES)

    assert "resuming from step_00000003: epoch 2, step 0" in resumed_from_hub(
        fake, stanford_dir, tmp_path / "B", capsys
    )
    assert_same_weights(tmp_path / "B", reference.output_dir)


def test_a_hub_checkpoint_of_another_config_is_refused_with_one_sentence(killed_run, stanford_dir, tmp_path):
    fake, _ = killed_run
    step = hub_step(fake)  # 6, or 9 after the resume test's final push
    config = config_for(stanford_dir, tmp_path / "C", resume="hub", **pushed())
    config.optim.lr = 0.5
    with pytest.MonkeyPatch.context() as patch:
        fake.install(patch)
        with pytest.raises(CheckpointError) as refused:
            finetune(config)
    assert str(refused.value).startswith(
        f"The Hub checkpoint 'hf-hub:{MODEL_ID}' (last-checkpoint/, step {step}) was written with a different config "
        "(optim.lr); resuming would change the run ("
    )
    assert str(refused.value).endswith("Restore those values, or start afresh in a new train.output_dir.")
    assert not list((tmp_path / "C" / "checkpoints").glob("*"))  # nothing downloaded is left behind


def test_a_repo_without_a_checkpoint_is_named(stanford_dir, tmp_path):
    fake = FakeHub(tmp_path / "hub")
    fake.create_repo("tester/export-only")
    with pytest.MonkeyPatch.context() as patch:
        fake.install(patch)
        with pytest.raises(CheckpointError, match="the repo holds no last-checkpoint/ folder; it is pushed by runs"):
            finetune(config_for(stanford_dir, tmp_path / "D", resume="hf-hub:tester/export-only"))
        with pytest.raises(CheckpointError, match="could not be downloaded: the repo was not found, or is private"):
            finetune(config_for(stanford_dir, tmp_path / "E", resume="hf-hub:tester/missing"))


@pytest.mark.parametrize(
    "resume,model_id,message",
    [
        ("hub", None, "train.resume 'hub' names no Hub repo; give a checkpoint folder"),
        ("hf-hub:not a repo", None, "train.resume 'hf-hub:not a repo' names no Hub repo"),
    ],
)
def test_hub_resume_values_are_checked_before_anything_starts(resume, model_id, message):
    config = FinetuneConfig(train=TrainConfig(mixed_precision="no", resume=resume), hub=HubConfig(model_id=model_id))
    with pytest.raises(ConfigError, match=message):
        validate(config, num_processes=1)
    validate(FinetuneConfig(train=TrainConfig(mixed_precision="no", resume="hf-hub:me/run")), num_processes=1)


def test_latest_push_wins_while_one_is_in_flight(stanford_dir, reference, tmp_path, capsys):
    """Three pushes asked for while the first uploads: the second is replaced by the third, never half-sent."""
    out = tmp_path / "run"
    shutil.copytree(reference.output_dir, out)
    release = threading.Event()
    fake = FakeHub(tmp_path / "hub", gates={1: release})
    hub_config = HubConfig(**pushed())
    with pytest.MonkeyPatch.context() as patch:
        fake.install(patch)
        with BackgroundPublisher(out, hub_config) as pushes:
            pushes.submit()
            assert fake.uploading.wait(60)  # the first is uploading now, and stays so until released
            pushes.submit()
            pushes.submit()
            release.set()
        results = pushes.wait()
    assert [u["ok"] for u in fake.uploads] == [True, True] and fake.uploads[0]["held"]
    assert [r.url is not None for r in results] == [True, False, True]
    out = capsys.readouterr().out
    last = f"the push after epoch 3 (checkpoint step_{EPOCHS * STEPS_PER_EPOCH:08d})"
    assert f"note: {last} was skipped: {last} replaced it while an upload was in flight" in out
    assert hub_step(fake) == EPOCHS * STEPS_PER_EPOCH


def test_a_push_that_cannot_even_start_is_reported_not_raised(tmp_path, capsys):
    """A resumed run's fresh folder before its first epoch ends has no metrics.jsonl: the push says so, and the run
    goes on (2 processes resuming from the Hub were checked by hand: the same weights as 1 process, bitwise)."""
    (tmp_path / "out").mkdir()
    with BackgroundPublisher(tmp_path / "out", HubConfig(**pushed())) as pushes:
        pushes.submit()
    (result,) = pushes.wait()
    assert result.url is None and result.epochs == 0
    assert result.message.startswith("warning: ") and "later with: tiny-transformers push" in capsys.readouterr().err
    assert "holds none; push without it (--hub.strategy end)." in result.message
    assert not (tmp_path / "out" / ".hub-push").exists()


def test_preempted_in_the_first_epoch_the_checkpoint_is_pushed_and_resumes_elsewhere(
    stanford_dir, reference, tmp_path, capsys
):
    """SIGTERM before any epoch ended: nothing to publish yet, so the push sends last-checkpoint/ alone, before the
    run exits; a fresh folder resumes from it and ends bitwise equal to the uninterrupted run."""
    fake = FakeHub(tmp_path / "hub", upload_seconds=0.5)
    with pytest.MonkeyPatch.context() as patch:
        fake.install(patch)
        patch.setattr(train_module, "train_steps", terminated_at(2))
        with pytest.raises(TrainingInterrupted, match="Training stopped by SIGTERM at epoch 1, step 2"):
            finetune(config_for(stanford_dir, tmp_path / "A", **pushed()))
    out = capsys.readouterr().out
    assert "waiting for the push of checkpoint step_00000002 to finish (at most 60 s: train.preempt_seconds)" in out
    (upload,) = fake.uploads
    assert upload["ok"] and upload["message"].startswith("tiny_transformers: training checkpoint step_00000002")
    assert upload["sent"] and all(name.startswith("last-checkpoint/") for name in upload["sent"])
    assert hub_step(fake) == 2
    assert not (tmp_path / "A" / ".hub-push").exists()

    assert "resuming from step_00000002: epoch 1, step 2" in resumed_from_hub(
        fake, stanford_dir, tmp_path / "B", capsys
    )
    assert_same_weights(tmp_path / "B", reference.output_dir)


def test_a_push_slower_than_preempt_seconds_is_left_behind_and_the_run_exits(stanford_dir, tmp_path, capsys):
    """The push at SIGTERM may take at most train.preempt_seconds from the signal; then the run exits anyway, says
    so with the retry command, and its local checkpoint is whole."""
    release = threading.Event()  # both uploads stay in flight until the run has exited
    fake = FakeHub(tmp_path / "hub", gates={1: release, 2: release})
    config = config_for(stanford_dir, tmp_path / "A", **pushed())
    config.train.preempt_seconds = 0.2
    with pytest.MonkeyPatch.context() as patch:
        fake.install(patch)
        patch.setattr(train_module, "train_steps", terminated_at(STEPS_PER_EPOCH + 1))
        with pytest.raises(TrainingInterrupted, match="at epoch 2, step 1"):
            finetune(config)
        # the run ended with no upload committed: the first is held open (or, on a loaded machine, not yet
        # started); a run that waited for it would have committed it when its gate timed out
        assert len(fake.uploads) <= 1 and not any(u["ok"] for u in fake.uploads)
        err = capsys.readouterr().err
        release.set()
        for thread in threading.enumerate():  # the abandoned upload, let end before the fake Hub goes away
            if thread.name == "hub-push":
                thread.join()
    retry = f"tiny-transformers push {tmp_path / 'A'} --hub.model_id {MODEL_ID} --hub.strategy checkpoint"
    for push in (
        "the push after epoch 1 (checkpoint step_00000003)",
        "the push after epoch 1 (checkpoint step_00000004)",
    ):
        assert (
            f"warning: {push} did not end within train.preempt_seconds; exiting without it. The run's files are "
            f"intact; push them later with: {retry}"
        ) in err
    assert (tmp_path / "A" / "checkpoints" / f"step_{STEPS_PER_EPOCH + 1:08d}" / "trainer_state.json").is_file()


@pytest.mark.slow
def test_what_a_push_left_when_its_process_died_is_removed_by_the_next_push_or_run_end(tmp_path, capsys):
    """A process that ends mid-upload (killed, or a push still running at train.preempt_seconds) cannot remove its
    snapshot, a copy of the weights; the next push or run end in the folder does. A live process's staging and
    another host's (whose process cannot be checked from here) are kept."""
    out = tmp_path / "out"
    out.mkdir()
    stage_and_die = (
        "import os, sys; from pathlib import Path; from tiny_transformers.push_staging import new_staging; "
        "(new_staging(Path(sys.argv[1]), 'snapshot') / 'model.safetensors').write_bytes(b'weights'); os._exit(0)"
    )
    live = push_staging.new_staging(out, "upload")  # this process's: a push in flight
    subprocess.run([sys.executable, "-c", stage_and_die, str(out)], check=True)
    (dead,) = set((out / ".hub-push").iterdir()) - {live}
    dead_pid = int(dead.name.split("-")[1])
    assert dead.name == f"snapshot-{dead_pid}-0-{socket.gethostname()}" and (dead / "model.safetensors").is_file()
    elsewhere = out / ".hub-push" / f"snapshot-{dead_pid}-0-another-host"
    elsewhere.mkdir()

    with BackgroundPublisher(out, HubConfig()):
        pass  # a run's end: no push, but its wait() sweeps
    assert not dead.exists() and live.is_dir() and elsewhere.is_dir()
    assert (
        f"removed 1 folder under {out / '.hub-push'} that a push left when its process (pid {dead_pid}) ended "
        "mid-upload"
    ) in capsys.readouterr().out

    shutil.rmtree(live)
    shutil.rmtree(elsewhere)
    dead.mkdir()  # the same dead process's, again: the next push sweeps it before staging its own
    fresh = push_staging.new_staging(out, "snapshot")
    assert not dead.exists() and fresh.is_dir()
    shutil.rmtree(fresh)
    dead.mkdir()
    assert push_staging.remove_abandoned(out) == [dead] and not (out / ".hub-push").exists()  # the folder, once empty


def test_a_background_push_runs_no_torch_op(stanford_dir, reference, tmp_path, monkeypatch):
    """The push thread never reads the weights with torch (training checked them finite before exporting): a torch
    op there starts a second OpenMP thread team, and the training thread's steps then ran 2x slower for the rest of
    the run on 2 cores (benchmarks/push_overlap.py). The `push` command still checks them."""
    out = tmp_path / "run"
    shutil.copytree(reference.output_dir, out)
    fake = FakeHub(tmp_path / "hub")
    fake.install(monkeypatch)
    reads: list[str] = []
    real = torch.Tensor.isfinite
    monkeypatch.setattr(
        torch.Tensor, "isfinite", lambda self: reads.append(threading.current_thread().name) or real(self)
    )
    with BackgroundPublisher(out, HubConfig(**pushed())) as pushes:
        pushes.submit()
    (result,) = pushes.wait()
    assert result.url is not None and reads == []
    push_run(out, HubConfig(**pushed()))
    assert reads and set(reads) == {"MainThread"}
