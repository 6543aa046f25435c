"""Data order: the same micro-batches per optimizer step on 1 or N processes, and exact mid-epoch restarts."""

import pytest

from tiny_transformers.config import FinetuneConfig, TrainConfig
from tiny_transformers.plan import Plan
from tiny_transformers.sampler import MicroBatchSampler, window_sample_count


def plan(num_processes, train_samples=37, micro=3, batch=12):
    return Plan.build(
        FinetuneConfig(train=TrainConfig(batch_size=batch, micro_batch_size=micro)), num_processes, train_samples
    )


def per_step(plan_, epoch=0, start_step=0):
    """{step: sorted indices seen by all processes} for one epoch."""
    steps = {}
    window = plan_.accumulation_steps * plan_.num_processes
    for rank in range(plan_.num_processes):
        sampler = MicroBatchSampler(plan_, rank=rank, seed=7, epoch=epoch, start_step=start_step)
        for g, batch in zip(sampler.global_indices(), sampler):
            steps.setdefault(g // window, []).extend(batch)
    return {s: sorted(v) for s, v in steps.items()}


@pytest.mark.parametrize("processes", [2, 4])
def test_each_step_sees_the_same_images_on_any_process_count(processes):
    single = per_step(plan(1))
    assert per_step(plan(processes)) == single
    seen = sorted(i for batch in single.values() for i in batch)
    assert seen == list(range(37))  # every image exactly once per epoch


def test_epochs_differ_and_restarts_continue_exactly():
    p = plan(2)
    assert per_step(p, epoch=0) != per_step(p, epoch=1)
    full = per_step(p, epoch=1)
    tail = per_step(p, epoch=1, start_step=2)
    assert tail == {s: v for s, v in full.items() if s >= 2}


def test_window_sample_counts_add_up_to_the_epoch():
    p = plan(2)
    counts = [window_sample_count(p, s) for s in range(p.steps_per_epoch)]
    assert counts == [12, 12, 12, 1]
    assert sum(counts) == 37


def test_a_persistent_loader_moved_between_epochs_gives_the_fresh_loaders_order():
    """One loader with persistent workers for the whole run, its sampler moved to each epoch (and to a mid-epoch
    step, as a resumed run starts), yields exactly what a new loader per epoch yields."""
    from torch.utils.data import DataLoader

    p = plan(1)
    data = list(range(p.train_samples))

    def fresh(epoch, start_step=0):
        sampler = MicroBatchSampler(p, rank=0, seed=7, epoch=epoch, start_step=start_step)
        return [b.tolist() for b in DataLoader(data, batch_sampler=sampler, num_workers=0)]

    kept = DataLoader(
        data, batch_sampler=MicroBatchSampler(p, rank=0, seed=7, epoch=0), num_workers=1, persistent_workers=True
    )
    for epoch, start_step in ((0, 2), (1, 0), (2, 0), (3, 1)):
        kept.batch_sampler.move_to(epoch, start_step)
        assert [b.tolist() for b in kept] == fresh(epoch, start_step)
