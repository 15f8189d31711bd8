"""Tests for eqprop.train.checkpoint: round trips, validation errors and crash atomicity."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import eqprop.train.checkpoint as ckpt_mod
from eqprop.train.checkpoint import (
    CHECKPOINT_VERSION,
    CheckpointError,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)

REPO_ROOT = Path(ckpt_mod.__file__).resolve().parents[2]


def assert_same(a: Any, b: Any, where: str = "payload") -> None:
    """Recursive equality for nested dicts/lists/tuples of tensors and plain values."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def make_training_state() -> tuple[torch.nn.Module, torch.optim.Optimizer, Any]:
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
    model(torch.randn(8, 5)).pow(2).mean().backward()
    opt.step()
    sched.step()
    return model, opt, sched


def full_payload() -> dict[str, Any]:
    model, opt, sched = make_training_state()
    return {
        "epoch": 3,
        "batch": 0,
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "rng": rng_state(),
        "best_val_accuracy": 0.875,
        "best_epoch": 2,
        "config": {"model": {"sizes": [784, 500, 10]}, "lr": [0.1, 0.05], "seed": 1},
        "metrics_history": [{"epoch": 1, "val_error": 0.2, "note": None, "ok": True}],
        "eqprop_version": "0.1.0",
    }


def test_round_trip_full_payload(tmp_path: Path) -> None:
    payload = full_payload()
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, payload)
    loaded = load_checkpoint(path)
    assert loaded["version"] == CHECKPOINT_VERSION
    assert_same(payload, {k: v for k, v in loaded.items() if k != "version"})

    # The loaded states must be usable, not just equal: restore them and take the same step.
    model, opt, sched = make_training_state()
    model2 = torch.nn.Linear(5, 3)
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    sched2 = torch.optim.lr_scheduler.CosineAnnealingLR(opt2, T_max=10)
    model2.load_state_dict(loaded["model"])
    opt2.load_state_dict(loaded["optimizer"])
    sched2.load_state_dict(loaded["scheduler"])
    x = torch.randn(4, 5)
    for m, o, s in ((model, opt, sched), (model2, opt2, sched2)):
        o.zero_grad()
        m(x).pow(2).mean().backward()
        o.step()
        s.step()
    assert_same(model.state_dict(), model2.state_dict())
    assert sched.get_last_lr() == sched2.get_last_lr()


def test_version_is_stamped_not_taken_from_payload(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"version": 99, "epoch": 0, "batch": 0, "model": {}})
    assert load_checkpoint(path)["version"] == CHECKPOINT_VERSION


def test_save_creates_parent_and_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "c.pt"
    save_checkpoint(path, {"epoch": 1, "batch": 0, "model": {}})
    save_checkpoint(path, {"epoch": 2, "batch": 5, "model": {}})
    assert load_checkpoint(path)["epoch"] == 2
    assert sorted(p.name for p in path.parent.iterdir()) == ["c.pt"]


def test_rng_state_restores_draws(tmp_path: Path) -> None:
    # Leave cached gaussians in both python and numpy so those parts of the state matter too.
    random.gauss(0.0, 1.0)
    np.random.randn(1)
    state = rng_state()
    path = tmp_path / "rng.pt"
    save_checkpoint(path, {"epoch": 0, "batch": 0, "model": {}, "rng": state})

    def draw() -> tuple[torch.Tensor, list[float], np.ndarray]:
        return (
            torch.rand(5),
            [random.random(), random.gauss(0.0, 1.0)],
            np.concatenate([np.random.rand(3), np.random.randn(3)]),
        )

    first = draw()
    draw()  # advance every generator past the saved point
    set_rng_state(load_checkpoint(path)["rng"])
    again = draw()
    assert torch.equal(first[0], again[0])
    assert first[1] == again[1]
    np.testing.assert_array_equal(first[2], again[2])
    assert isinstance(state["cuda"], list)


def test_set_rng_state_tolerates_partial_dict() -> None:
    torch.manual_seed(3)
    expected = torch.rand(2)
    torch.manual_seed(3)
    partial = {"torch": torch.get_rng_state()}
    torch.rand(7)
    set_rng_state(partial)
    assert torch.equal(torch.rand(2), expected)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.pt"
    with pytest.raises(CheckpointError, match="not found") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"this is not a checkpoint\n" * 10,
        b"PK\x03\x04" + os.urandom(256),
        bytes(random.Random(0).randrange(256) for _ in range(4096)),
    ],
    ids=["empty", "text", "fake-zip", "random-bytes"],
)
def test_garbage_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "garbage.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="not a valid eqprop checkpoint") as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message
    assert "\n" not in message
    assert "unreadable" in message and "weights_only" not in message  # no unsafe advice


def test_truncated_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"epoch": 1, "batch": 0, "model": {"w": torch.randn(1000)}})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a valid eqprop checkpoint"):
        load_checkpoint(path)


def test_non_dict_and_versionless(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="no version field"):
        load_checkpoint(path)
    torch.save({"epoch": 1}, path)
    with pytest.raises(CheckpointError, match="no version field"):
        load_checkpoint(path)
    torch.save({"version": "1", "epoch": 1, "batch": 0, "model": {}}, path)
    with pytest.raises(CheckpointError, match="bad version field"):
        load_checkpoint(path)


def test_version_too_new(tmp_path: Path) -> None:
    path = tmp_path / "future.pt"
    torch.save({"version": CHECKPOINT_VERSION + 1, "epoch": 1, "batch": 0, "model": {}}, path)
    with pytest.raises(CheckpointError, match="newer than the supported") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_missing_required_keys(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"epoch": 1})
    with pytest.raises(CheckpointError, match="missing required checkpoint keys: batch, model"):
        load_checkpoint(path)
    assert load_checkpoint(path, required_keys=("epoch",))["epoch"] == 1


class _Custom:
    pass


def test_arbitrary_objects_are_rejected_on_load(tmp_path: Path) -> None:
    # weights_only loading: a pickled custom class must not be instantiated.
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"epoch": 1, "batch": 0, "model": {}, "evil": _Custom()})
    with pytest.raises(CheckpointError, match="not a valid eqprop checkpoint"):
        load_checkpoint(path)


def test_failed_save_keeps_old_file_and_cleans_temp(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"epoch": 1, "batch": 0, "model": {}})
    with pytest.raises(Exception):  # noqa: B017 - whatever pickling raises for a lambda
        save_checkpoint(path, {"epoch": 2, "batch": 0, "model": {}, "bad": lambda: None})
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


# ---------------------------------------------------------------------------- kill test

# One python process imports torch once, then forks a writer per kill on request: importing
# torch per writer would cost ~2 s each and dominate the test. Commands on stdin:
#   fork -> fork a child that saves checkpoints in a loop forever; answers its pid
#   wait -> reap that child; answers the signal that ended it (-1 if it exited by itself)
_WRITER_SCRIPT = """
import os
import sys
import warnings

import torch

from eqprop.train.checkpoint import save_checkpoint

warnings.simplefilter("ignore", DeprecationWarning)  # Python >= 3.12: fork with threads
torch.set_num_threads(1)  # no thread pool for a forked child to inherit half-alive
path = sys.argv[1]
# Two payloads of different sizes (~2 MB and ~6 MB) so a torn mix of them is detectable.
data = [torch.full((512 * 1024,), 1.0), torch.full((3 * 512 * 1024,), 2.0)]


def write_forever():
    i = 0
    while True:
        save_checkpoint(path, {"epoch": i, "batch": 0, "tag": i % 2, "model": {"w": data[i % 2]}})
        i += 1


print("ready", flush=True)
child = None
for line in sys.stdin:
    if line.strip() == "fork":
        child = os.fork()
        if child == 0:
            try:
                write_forever()
            finally:
                os._exit(1)
        print(child, flush=True)
    elif line.strip() == "wait":
        _, status = os.waitpid(child, 0)
        print(os.WTERMSIG(status) if os.WIFSIGNALED(status) else -1, flush=True)
"""

N_KILLS = 8


def _check_complete(ckpt: dict[str, Any]) -> None:
    tag = ckpt["tag"]
    assert tag == ckpt["epoch"] % 2
    w = ckpt["model"]["w"]
    assert w.shape == ((512 * 1024,) if tag == 0 else (3 * 512 * 1024,))
    assert bool((w == float(tag + 1)).all())


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork and SIGKILL (POSIX)")
def test_sigkill_never_leaves_a_torn_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    pythonpath = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER_SCRIPT, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": pythonpath},
    )
    assert proc.stdin is not None and proc.stdout is not None

    def ask(command: str) -> str:
        proc.stdin.write(command + "\n")
        proc.stdin.flush()
        answer = proc.stdout.readline().strip()
        assert answer, f"writer process died (exit code {proc.poll()})"
        return answer

    rng = random.Random(1234)
    try:
        assert proc.stdout.readline().strip() == "ready", "writer process failed to start"
        for _ in range(N_KILLS):
            pid = int(ask("fork"))
            deadline = time.monotonic() + 20
            while not path.exists():  # only the first writer has to create the file
                assert time.monotonic() < deadline, "no checkpoint written"
                time.sleep(0.005)
            time.sleep(rng.uniform(0.05, 0.5))
            os.kill(pid, signal.SIGKILL)
            # The writer must have been killed, not have died of an error of its own.
            assert int(ask("wait")) == signal.SIGKILL
            _check_complete(load_checkpoint(path))
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()

    # Leftover temp files from killed writers must not disturb later saves or loads.
    save_checkpoint(path, {"epoch": -1, "batch": 0, "tag": 1, "model": {"w": torch.ones(1)}})
    assert load_checkpoint(path)["epoch"] == -1
