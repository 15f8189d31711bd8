"""Stopping a run: Ctrl-C and SIGTERM save and say how to resume, evaluation stops at the next
batch, and a second signal never loses the work a save can keep."""

from __future__ import annotations

import signal

import pytest
from tinyruns import TINY_ARGS, records, signal_at_batch, tiny

from eqprop.cli import main
from eqprop.dynamics import FreeRelaxation
from eqprop.estimators.ep import RandomSignEP
from eqprop.train.checkpoint import load_checkpoint
from eqprop.train.interrupt import Interrupt
from eqprop.train.trainer import Trainer

#: Random-sign EP draws from its own generator every batch: a resume must restore it exactly.
CONFIG = ("estimator.kind=random_sign", "train.eval_batch_size=16")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    Trainer(tiny(*CONFIG), out, quiet=True).fit()
    return records(out)


def resume_and_compare(run_dir, expected) -> None:
    Trainer(tiny(*CONFIG), run_dir, quiet=True).fit(resume=True)
    assert records(run_dir) == expected


def test_sigterm_saves_says_how_to_resume_and_the_resumed_run_is_exact(
    tmp_path, monkeypatch, capsys, uninterrupted
):
    signal_at_batch(monkeypatch, 30, signal.SIGTERM)  # mid-epoch 2
    result = Trainer(tiny(*CONFIG), tmp_path, quiet=True).fit()
    assert result["interrupted"] and result["exit_code"] == 143
    err = capsys.readouterr().err
    assert "SIGTERM received: stopping after this batch" in err
    assert "stopped (SIGTERM) in epoch 2 at batch 8/22" in err
    assert f"continue with: eqprop resume {tmp_path}" in err
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["batch"] == 30 - 22
    monkeypatch.undo()
    resume_and_compare(tmp_path, uninterrupted)


def test_ctrl_c_during_evaluation_is_acknowledged_and_stops_at_the_next_batch(
    tmp_path, monkeypatch, capsys, uninterrupted
):
    evaluated = []
    original = FreeRelaxation.free_state

    def free_state(self, net, x):
        evaluated.append(len(x))
        if len(evaluated) == 1:
            signal.raise_signal(signal.SIGINT)
            assert "Ctrl-C received" in capsys.readouterr().err  # at once, not after evaluating
        return original(self, net, x)

    monkeypatch.setattr(FreeRelaxation, "free_state", free_state)
    result = Trainer(tiny(*CONFIG), tmp_path, quiet=True).fit()
    assert result["exit_code"] == 130
    assert len(evaluated) == 1  # of the 10 validation batches
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert (ckpt["epoch"], ckpt["batch"]) == (0, 22)  # the epoch's training is kept
    assert "stopped (Ctrl-C) in epoch 1 during evaluation" in capsys.readouterr().err
    monkeypatch.undo()
    resume_and_compare(tmp_path, uninterrupted)


def test_a_second_ctrl_c_mid_batch_stops_at_once_and_keeps_the_batches_before(
    tmp_path, monkeypatch, uninterrupted
):
    original = RandomSignEP.phase_betas
    calls = {"n": 0}

    def phase_betas(self):
        betas = original(self)  # the generator has moved on: the stop must undo it
        calls["n"] += 1
        if calls["n"] == 5:
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)  # raises KeyboardInterrupt here
        return betas

    monkeypatch.setattr(RandomSignEP, "phase_betas", phase_betas)
    assert Trainer(tiny(*CONFIG), tmp_path, quiet=True).fit()["exit_code"] == 130
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["batch"] == 4
    monkeypatch.undo()
    resume_and_compare(tmp_path, uninterrupted)


def test_a_second_signal_waits_for_the_save_in_progress_and_a_third_abandons_it():
    interrupt = Interrupt()
    done = []
    with interrupt.installed():
        signal.raise_signal(signal.SIGINT)
        assert interrupt.requested
        with pytest.raises(KeyboardInterrupt), interrupt.critical():
            signal.raise_signal(signal.SIGINT)  # deferred to the end of the section
            done.append("saved")
        assert done == ["saved"]
        with pytest.raises(KeyboardInterrupt), interrupt.critical():
            signal.raise_signal(signal.SIGINT)  # a third one: at once
            done.append("never")
    assert done == ["saved"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_the_cli_exits_143_after_sigterm_and_130_after_ctrl_c(tmp_path, monkeypatch, capsys):
    signal_at_batch(monkeypatch, 3, signal.SIGTERM)
    assert main(["train", "--out", str(tmp_path / "a"), *TINY_ARGS]) == 143
    signal_at_batch(monkeypatch, 3, signal.SIGINT)
    assert main(["train", "--out", str(tmp_path / "b"), *TINY_ARGS]) == 130
    err = capsys.readouterr().err
    assert f"eqprop resume {tmp_path / 'a'}" in err and f"eqprop resume {tmp_path / 'b'}" in err


def test_sigterm_before_training_starts_is_a_message_not_a_traceback(tmp_path, monkeypatch, capsys):
    import eqprop.train.trainer as trainer_module

    def load_dataset(*args, **kwargs):
        signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(trainer_module, "load_dataset", load_dataset)
    assert main(["train", "--out", str(tmp_path / "run"), *TINY_ARGS]) == 143
    assert capsys.readouterr().err.strip() == "eqprop: stopped by SIGTERM"
