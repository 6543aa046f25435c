"""Stop signals where a run is not training: between two ablation rows, and to the whole process group (as SLURM
stops a job step), which the DataLoader workers receive too."""

from __future__ import annotations

import signal

import pytest

from tiny_transformers import cli
from tiny_transformers import train as train_module

from .test_ablate import tiny_overrides


@pytest.mark.parametrize("when", ["after the row returned", "while the row wrote last/"])
def test_sigint_between_two_ablation_rows_is_the_stop_sentence_and_exit_130(
    stanford_dir, tmp_path, capsys, monkeypatch, when
):
    """A real SIGINT to this process once the first row's training is over (after finetune returned, or while its
    finish() writes last/ and the report, where the row's own handler records it): no KeyboardInterrupt, no second
    row, the first row finished."""
    real = train_module.finetune if when == "after the row returned" else train_module.finish
    calls = []

    def then_interrupt(*args, **kwargs):
        calls.append(1)
        result = real(*args, **kwargs)
        if len(calls) == 1:
            signal.raise_signal(signal.SIGINT)
        return result

    monkeypatch.setattr(train_module, "finetune" if when == "after the row returned" else "finish", then_interrupt)
    root = tmp_path / "swin_l"
    args = ["ablate", "swin_l", "--rows", "default", "no_mixup", "--root", str(root), *tiny_overrides(stanford_dir)]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        cli.main(args)
    printed = capsys.readouterr()
    assert exit_.value.code == 130
    assert printed.err.strip().splitlines()[-1] == (
        "stopped: Ablation stopped by SIGINT between rows, before [2/2] no_mixup; the rows before it are kept. "
        f"Resume with tiny-transformers ablate {' '.join(args[1:])} (finished rows are skipped)."
    )
    assert "KeyboardInterrupt" not in printed.err and "Traceback" not in printed.err
    assert "[1/2] default: done" in printed.out and "[2/2] no_mixup: training" not in printed.out
    assert (root / "default" / "last" / "model.safetensors").is_file() and not (root / "no_mixup").exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handlers came back
