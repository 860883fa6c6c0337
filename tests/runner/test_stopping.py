"""A signal stops a run without losing work: the first SIGINT or SIGTERM after the edit in progress
(journaled, checkpointed, results written, one line, status 128 + the signal), so that resume=true
continues there without a replay; a second one at once."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.runs import cli, repo_env

from betaedit_plugin.runner.experiment import RUN_PID
from betaedit_plugin.runner.journal import Journal, JournalError
from betaedit_plugin.runner.stopping import RunInterrupted, stop_between_edits

from test_out_dir import _tiny  # tests/runner is on sys.path (rootdir conftest, no packages)


def _run(tmp: Path, out: Path, *extra: str) -> list:
    """A tiny run with enough edits that it is still editing when the signal comes (no evaluation
    before the end, no periodic checkpoint)."""
    return _tiny(tmp, "num_edits=400", "eval_every=400", "checkpoint_every=0", "eval.max_cases=2", f"out_dir={out}", *extra)


def _journaled(out: Path) -> int:
    try:
        return Journal.open(out).last_step if Journal.exists(out) else 0
    except JournalError:  # (not expected: every write is atomic)
        return 0


def _start(tmp: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "betaedit_plugin.run", *_run(tmp, out)], cwd=tmp, env=repo_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _signal_while_editing(proc: subprocess.Popen, out: Path, signum: int, edits: int = 2):
    """Send ``signum`` once the run journaled ``edits`` edits; its (returncode, stderr)."""
    deadline = time.monotonic() + 300
    while _journaled(out) < edits:
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "the run journaled no edit in 300 s"
        time.sleep(0.05)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_the_run_after_the_edit_in_progress_with_a_checkpoint_there(tmp_path, signum):
    out = tmp_path / "out"
    code, err = _signal_while_editing(_start(tmp_path, out), out, signum)
    assert code == 128 + signum, err
    assert "Traceback" not in err, err
    step = _journaled(out)
    assert 2 <= step < 400
    name = signal.Signals(signum).name
    assert err.splitlines()[-1] == (
        f"betaedit-run: stopped after edit {step} by {name}: out_dir {str(out)!r} holds {step} journaled edit(s), "
        f"its last checkpoint at step {step}; the same command with resume=true continues it"), err
    results = json.loads((out / "results.json").read_text())
    assert (results["status"], results["edits_done"]) == ("stopped", step)
    assert [e["step"] for e in results["edits"]] == list(range(1, step + 1))
    assert [p.name for p in (out / "checkpoints").iterdir()] == [f"step-{step:07d}"]
    assert not (out / RUN_PID).exists()  # the hold on out_dir was released

    if signum == signal.SIGINT:  # resume continues from that checkpoint: no replay, the next edit is the step after it
        proc = cli(_run(tmp_path, out, "resume=true", f"stop_after={step + 1}"), cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        results = json.loads((out / "results.json").read_text())
        assert (results["status"], results["edits_done"], results["resumed_from"]) == ("stopped", step + 1, step)
        assert not results.get("replayed"), results.get("replayed")
        assert _journaled(out) == step + 1


def test_a_second_signal_stops_at_once_and_the_handlers_come_back(caplog):
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    caplog.set_level(logging.WARNING, logger="betaedit_plugin.runner.stopping")
    with stop_between_edits(lambda: "edit 3 of 9") as request:
        assert not request
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)  # the handler runs between bytecodes of this thread
        assert request.signum == signal.SIGTERM
        assert "SIGTERM: stopping after edit 3 of 9" in caplog.text
        with pytest.raises(RunInterrupted) as stopped:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
    assert (stopped.value.signum, stopped.value.exit_code, stopped.value.step) == (signal.SIGINT, 130, None)
    assert isinstance(stopped.value, KeyboardInterrupt)  # what code that catches Ctrl-C expects
    assert {s: signal.getsignal(s) for s in before} == before
