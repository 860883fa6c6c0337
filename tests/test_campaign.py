"""results/campaign.py: the runs' command lines and the rounds of `queue --rounds` (which run goes next,
how far, and when a run is left out), with the runs themselves replaced by a record of the calls."""

from __future__ import annotations

import os

import pytest

from support.runs import results_script


@pytest.fixture
def campaign():
    return results_script("campaign")


def _fake_runs(campaign, monkeypatch, done: dict, stuck_at: dict = {}):
    """journaled() reads ``done``; a run advances to its stop_after unless ``stuck_at`` stops it there."""
    by_dir = {out_dir: name for name, (out_dir, _) in campaign.runs().items()}
    calls = []

    def run(names, extra):
        (name,) = names
        stop = dict(e.split("=", 1) for e in extra)["stop_after"]
        stop = stop if stop == "null" else int(stop)  # null: to the end (a run refuses stop_after=num_edits)
        calls.append((name, stop, extra[:-1]))
        reached = 1000 if stop == "null" else stop
        done[name] = min(reached, stuck_at.get(name, reached))

    monkeypatch.setattr(campaign, "journaled", lambda out_dir: done[by_dir[out_dir]])
    monkeypatch.setattr(campaign, "_run_serially", run)
    return calls


def test_rounds_move_the_run_furthest_behind_to_the_next_multiple(campaign, monkeypatch):
    done = {"seq-memit": 331, "seq-alphaedit": 402, "seq-betaedit": 500}
    calls = _fake_runs(campaign, monkeypatch, done)
    campaign._run_in_rounds(["seq-betaedit", "seq-alphaedit", "seq-memit"], ("hparams.device=cpu",), 100, 700)
    assert [(n, s) for n, s, _ in calls] == [
        ("seq-memit", 400), ("seq-memit", 500), ("seq-alphaedit", 500), ("seq-betaedit", 600),
        ("seq-alphaedit", 600), ("seq-memit", 600), ("seq-betaedit", 700), ("seq-alphaedit", 700), ("seq-memit", 700),
    ]
    assert all(extra == ("hparams.device=cpu",) for _, _, extra in calls)  # other options pass through
    assert done == dict.fromkeys(done, 700)


def test_a_run_that_does_not_advance_is_left_out_and_the_others_go_on(campaign, monkeypatch, capsys):
    done = {"seq-memit": 500, "seq-alphaedit": 500}
    calls = _fake_runs(campaign, monkeypatch, done, stuck_at={"seq-alphaedit": 600})
    campaign._run_in_rounds(["seq-alphaedit", "seq-memit"], (), 250)
    # without stop_after the limit is the target, 1,000 edits
    assert [(n, s) for n, s, _ in calls] == [("seq-alphaedit", 750), ("seq-memit", 750), ("seq-alphaedit", 750),
                                            ("seq-memit", "null")]
    assert done == {"seq-memit": 1000, "seq-alphaedit": 600}
    assert "seq-alphaedit did not advance: left out of the rounds" in capsys.readouterr().out


def test_a_run_named_with_at_n_stops_there_in_rounds(campaign, monkeypatch):
    done = {"seq-memit": 300, "seq-alphaedit": 300}
    calls = _fake_runs(campaign, monkeypatch, done)
    campaign._run_in_rounds(["seq-alphaedit@500", "seq-memit"], (), 100, 400)
    assert [(n, s) for n, s, _ in calls] == [("seq-alphaedit", 400), ("seq-memit", 400), ("seq-alphaedit", 500)]


def test_a_run_named_with_at_n_stops_there_over_the_queues_stop_after(campaign, monkeypatch, tmp_path):
    started = []

    class Child:  # a run that ends at once
        def __init__(self, cmd, **kwargs):
            started.append(cmd)

        def wait(self):
            return 0

    monkeypatch.setattr(campaign, "ROOT", tmp_path)  # the runs' .out logs go there
    monkeypatch.setattr(campaign.subprocess, "Popen", Child)
    monkeypatch.setattr(campaign, "progress", lambda out_dir, target=1000: "")
    campaign._run_serially(["betaedit-l1_0-l2_10-tau100@500", "alphaedit-L2_10", "bank@700"],
                           ("hparams.device=cpu", "stop_after=250"))
    stops = [[a for a in cmd if a.startswith(("stop_after=", "hparams.device="))] for cmd in started]
    assert stops == [["hparams.device=cpu", "stop_after=500"], ["hparams.device=cpu", "stop_after=250"],
                     ["hparams.device=cpu", "stop_after=700"]]
    assert [cmd[-1] for cmd in started] == [f"out_dir={campaign.runs()[n][0]}"
                                            for n in ("betaedit-l1_0-l2_10-tau100", "alphaedit-L2_10", "bank")]
    assert campaign.command(*campaign._own_stop((), "seq-memit@300"))[-2] == "stop_after=300"
    # NAME@N at the run's target runs it to its end (the runner refuses stop_after=num_edits)
    assert campaign.command(*campaign._own_stop(("stop_after=250",), "memit-w_1000@1000"))[-2] == "stop_after=null"
    # amend:NAME re-scores the run's recorded points (replay --every-point --amend), logged beside its .out
    started.clear()
    campaign._run_serially(["amend:seq-betaedit", "seq-memit@300"], ("stop_after=250",))
    assert started[0][-5:] == ["betaedit_plugin.run", "replay", campaign.runs()["seq-betaedit"][0], "--every-point", "--amend"]
    assert "stop_after=300" in started[1]
    assert (tmp_path / campaign.SEQ / "seq-betaedit.amend.out").is_file()


@pytest.mark.parametrize("argv, message", [
    (["start", "--rounds", "100", "seq-memit"], "--rounds is an option of queue"),
    (["queue", "--rounds", "0", "seq-memit"], "--rounds '0': expected edits per turn, an int >= 1"),
    (["queue", "--stop-after"], "--stop-after needs a value"),
    (["queue", "seq-memit@0"], r"'seq-memit@0': expected NAME@N, N the edits after which the run stops, an int >= 1"),
    (["start", "seq-memit@x"], r"'seq-memit@x': expected NAME@N"),
    (["queue", "--rounds", "100", "amend:seq-memit"], "amend:NAME re-scores a run's points; it has no rounds"),
])
def test_bad_options_are_named_before_anything_starts(campaign, monkeypatch, argv, message):
    monkeypatch.setattr(campaign.subprocess, "Popen", lambda *a, **k: pytest.fail("a run was started"))
    with pytest.raises(SystemExit, match=message):
        campaign.main(argv)


def test_the_sequential_runs_share_records_and_evaluation_and_differ_in_their_settings(campaign):
    cmds = {m: campaign.command(f"seq-{m}") for m in campaign.SEQ_SETTINGS}
    common = set.intersection(*(set(c) for c in cmds.values()))
    for arg in ("model=smollm2-135m", "data=counterfact", "num_edits=1000", "batch_size=1", "eval_every=100", "resume=true"):
        assert arg in common
    assert "hparams.lambda1=300" in cmds["betaedit"] and "hparams.L2=10" in cmds["alphaedit"]
    assert cmds["memit"][-1] == "out_dir=results/smollm2-counterfact-n1000/memit"


@pytest.mark.parametrize("phase, variant, setting", [
    ("seq", "betaedit-l1_1000", ["hparams.lambda1=300", "hparams.lambda1=1000"]),
    ("seq", "betaedit-l1_0", ["hparams.lambda1=300", "hparams.lambda1=0"]),  # the ablation without the leakage penalty
    ("seq", "betaedit-tau_never", ["hparams.tau=100", "hparams.tau=100000"]),  # ... without the refresh
    ("seq", "betaedit-last", ["hparams.fact_token=last"]),  # ... keys at the prompt's last token
    ("seq", "betaedit-rc0", ["hparams.recollect_c0=true"]),  # C0 from the edited model at each refresh (not in the paper)
    ("zsre", "betaedit-z50", ["hparams.v_num_grad_steps=50"]),  # a larger z* budget on ZsRE
    ("zsre", "betaedit-z50-clamp1.5", ["hparams.v_num_grad_steps=50", "hparams.clamp_norm_factor=1.5"]),
])
def test_a_variant_differs_from_its_headline_run_only_in_its_setting_and_folder(campaign, phase, variant, setting):
    folder = {"seq": "results/smollm2-counterfact-n1000", "zsre": "results/smollm2-zsre-n1000"}[phase]
    head, other = campaign.command(f"{phase}-betaedit"), campaign.command(f"{phase}-{variant}")
    assert sorted(set(head) ^ set(other)) == sorted([*setting, f"out_dir={folder}/betaedit", f"out_dir={folder}/{variant}"])
    assert campaign.num_edits(f"{phase}-{variant}") == 1000


def test_the_zsre_runs_are_the_headline_runs_on_zsre_in_their_own_folder(campaign):
    for method in campaign.SEQ_SETTINGS:
        cf, zsre = campaign.command(f"seq-{method}"), campaign.command(f"zsre-{method}")
        assert sorted(set(cf) ^ set(zsre)) == sorted([
            "data=counterfact", "data=zsre", f"out_dir=results/smollm2-counterfact-n1000/{method}",
            f"out_dir=results/smollm2-zsre-n1000/{method}", "run_root=results/smollm2-counterfact-n1000",
            "run_root=results/smollm2-zsre-n1000", "eval.ppl_tokens=16384"])


# ---------------------------------------------------------------------------- the end of a stretch: stop
_FAKE_RUN = r"""
import signal, sys, time
from pathlib import Path
log = Path(sys.argv[1])
def stop(signum, frame):  # as a run does: finish the edit in progress, then exit 128 + the signal
    with log.open("a") as f:
        f.write(signal.Signals(signum).name + "\n")
    time.sleep(0.5)
    sys.exit(128 + signum)
signal.signal(signal.SIGINT, stop)
log.write_text("")
time.sleep(120)
"""

# a queue with its run in progress: it passes a signal on to the run, as `_serial` does
_FAKE_QUEUE = r"""
import signal, subprocess, sys, time
from pathlib import Path
log, run_log, run_pid = map(Path, sys.argv[1:4])
run = subprocess.Popen([sys.executable, "-c", FAKE_RUN, str(run_log), "-m", "betaedit_plugin.run"])
def stop(signum, frame):
    with log.open("a") as f:
        f.write(signal.Signals(signum).name + "\n")
    run.send_signal(signum)
    run.wait()
    sys.exit(128 + signum)
signal.signal(signal.SIGINT, stop)
run_pid.write_text(f"{run.pid}\n")
log.write_text("")
time.sleep(120)
""".replace("FAKE_RUN", repr(_FAKE_RUN))


def test_a_queue_that_got_a_stop_signal_passes_it_to_its_run_and_starts_no_other(campaign, monkeypatch, tmp_path, capsys):
    before = {s: campaign.signal.getsignal(s) for s in (campaign.signal.SIGINT, campaign.signal.SIGTERM)}
    monkeypatch.setattr(campaign, "ROOT", tmp_path)
    monkeypatch.setattr(campaign, "runs", lambda: {"a": ("phase/a", []), "b": ("phase/b", [])})
    monkeypatch.setattr(campaign, "progress", lambda out_dir: f"{out_dir} advanced")
    # the run signals its queue (as `stop` does), which passes the signal back to it: once
    log = tmp_path / "run.signals"
    child = _FAKE_RUN.replace("log.write_text(\"\")", "log.write_text(\"\"); import os; os.kill(os.getppid(), signal.SIGINT)")
    monkeypatch.setattr(campaign, "command", lambda name, extra: [campaign.sys.executable, "-c", child, str(log)])
    try:
        campaign._end_queue_on_signal()
        campaign._run_serially(["a", "b"], ())
        campaign._run_in_rounds(["a", "b"], (), 100)  # rounds do not start either
    finally:
        for s, h in before.items():
            campaign.signal.signal(s, h)
    out = capsys.readouterr().out
    assert out.splitlines() == ["running a ", "SIGINT: the queue ends once the run in progress stopped",
                                "a exited 130: phase/a advanced"], out
    assert log.read_text() == "SIGINT\n"


def test_stop_signals_each_queue_and_each_run_outside_a_queue_once_and_waits_for_them(campaign, monkeypatch, tmp_path,
                                                                                      capsys):
    import subprocess
    import sys
    import time

    monkeypatch.setattr(campaign, "ROOT", tmp_path)
    names = ("alone", "queued", "dead")
    monkeypatch.setattr(campaign, "runs", lambda: {name: (f"p/{name}", []) for name in names})
    monkeypatch.setattr(campaign, "progress", lambda out_dir: f"{out_dir} stopped")
    script = tmp_path / "campaign.py"  # the queue's script: this test's own, never a real queue of this checkout
    find_queues = campaign.live_queues
    monkeypatch.setattr(campaign, "live_queues", lambda: find_queues(script))
    logs = {k: tmp_path / f"{k}.signals" for k in ("alone", "queue", "queued")}
    for name in names:
        (tmp_path / "p" / name).mkdir(parents=True)
    procs = {
        "alone": subprocess.Popen([sys.executable, "-c", _FAKE_RUN, str(logs["alone"]), "-m", "betaedit_plugin.run"]),
        "queue": subprocess.Popen([sys.executable, "-c", _FAKE_QUEUE, str(logs["queue"]), str(logs["queued"]),
                                   str(tmp_path / "p/queued/.betaedit-run.pid"), str(script), "_serial"], cwd=tmp_path),
    }
    try:
        (tmp_path / "p/alone/.betaedit-run.pid").write_text(f"{procs['alone'].pid}\n")
        (tmp_path / "p/dead/.betaedit-run.pid").write_text(f"{2 ** 22 + 7}\n")  # left by a run that died
        while not all(log.exists() for log in logs.values()):  # their handlers are in place
            time.sleep(0.05)
        queued = int((tmp_path / "p/queued/.betaedit-run.pid").read_text())
        assert campaign.live_queues() == [procs["queue"].pid]
        assert campaign.live_runs() == {"alone": procs["alone"].pid, "queued": queued}
        assert campaign.stop(timeout=60) == 0
        assert {k: p.wait(timeout=5) for k, p in procs.items()} == {"alone": 130, "queue": 130}
        assert {k: log.read_text() for k, log in logs.items()} == dict.fromkeys(logs, "SIGINT\n")  # once each
        out = capsys.readouterr().out
        assert (f"SIGINT sent to 1 queue(s) [{procs['queue'].pid}] (their runs: ['queued']) and 1 other run(s) "
                "['alone']") in out
        assert "p/alone stopped" in out and "p/queued stopped" in out and "dead" not in out
    finally:
        for p in procs.values():
            p.kill()


def test_each_fixed_as_seq_run_has_a_screening_twin_with_its_settings_and_bank(campaign):
    for method in campaign.SEQ_SETTINGS:
        twin = campaign.screening_twin(method)
        assert not twin.startswith(("fixed-", "seq-", "zsre-")) and twin != "bank"

        def edits(name):  # what decides the edits written: method, settings, records, bank
            return sorted(o for o in campaign.runs()[name][1]
                          if o.startswith(("method=", "hparams.", "targets=", "data=", "model=", "num_edits=")))

        assert edits(twin) == edits(f"fixed-{method}")


def _status_run(campaign, monkeypatch, tmp_path, journaled: int):
    """A run folder ``tmp_path/run`` that `campaign.progress` reads as holding ``journaled`` journaled edits."""
    from betaedit_plugin.runner.journal import Journal

    monkeypatch.setattr(campaign, "ROOT", tmp_path)
    monkeypatch.setattr(campaign, "journaled", lambda out_dir: journaled)
    monkeypatch.setattr(Journal, "exists", staticmethod(lambda path: True))
    run = tmp_path / "run"
    run.mkdir()
    return run


def test_status_says_running_only_while_the_runs_pid_names_a_live_process(campaign, monkeypatch, tmp_path):
    import json
    import subprocess
    import sys

    run = _status_run(campaign, monkeypatch, tmp_path, 337)
    (run / "results.json").write_text(json.dumps({"status": "running", "edits": []}))
    # no pid file: results.json was committed mid-run on another machine, or its run was killed
    assert campaign.progress("run") == "337/1000 journaled, results interrupted (no live run here; resume=true continues it from its journal)"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (run / ".betaedit-run.pid").write_text(f"{gone.pid}\n")  # left by a run killed with SIGKILL
    assert "results interrupted" in campaign.progress("run")
    (run / ".betaedit-run.pid").write_text(f"{os.getpid()}\n")
    assert campaign.progress("run") == f"337/1000 journaled, results running (live: pid {os.getpid()})"
    (run / "results.json").write_text(json.dumps({"status": "stopped", "edits": []}))
    (run / ".betaedit-run.pid").unlink()
    assert campaign.progress("run") == "337/1000 journaled, results stopped"


def test_status_counts_the_replay_that_resuming_on_this_machine_needs(campaign, monkeypatch, tmp_path):
    import json

    run = _status_run(campaign, monkeypatch, tmp_path, 300)
    computed = [{"step": i, "seconds": 3.6} for i in range(101, 301)]
    (run / "results.json").write_text(json.dumps({"status": "stopped", "edits": computed}))
    head = "300/1000 journaled, results stopped; 3.6 s per computed edit lately (median of 20): "
    # no checkpoint here and no replay logged: 700 edits x 3.6 s, and a replay it cannot price
    assert campaign.progress("run") == head + ("0.7 h to go, plus the replay of 300 journaled edits that resuming "
                                               "here needs first (its pace not logged)")
    # replayed edits logged (an earlier resume; its latest 20 took 6 s each, slower ones before them): 0.7 h + 300 x 6 s
    replayed = [{"step": i, "seconds": 60.0 if i <= 80 else 6.0, "replayed": True} for i in range(1, 101)]
    (run / "results.json").write_text(json.dumps({"status": "stopped", "replayed": {"to_step": 100},
                                                  "edits": replayed + computed}))
    owed = " (with the replay of {} journaled edits that resuming here needs first)"
    assert campaign.progress("run") == head + "1.2 h to go" + owed.format(300)
    # a checkpoint at 250 (complete: its manifest is written last) leaves 50 to replay; one without a manifest counts not
    for step, complete in ((250, True), (300, False)):
        (run / "checkpoints" / f"step-{step:07d}").mkdir(parents=True)
        if complete:
            (run / "checkpoints" / f"step-{step:07d}" / "manifest.json").write_text("{}")
    assert campaign.progress("run") == head + "0.8 h to go" + owed.format(50)
    (run / "checkpoints" / "step-0000300" / "manifest.json").write_text("{}")
    assert campaign.progress("run") == head + "0.7 h to go"
    # a live run owes no replay whatever its last checkpoint: `stop` checkpoints it at the journal's end
    (run / "checkpoints" / "step-0000300" / "manifest.json").unlink()
    (run / ".betaedit-run.pid").write_text(f"{os.getpid()}\n")
    assert campaign.progress("run") == head + f"0.7 h to go (live: pid {os.getpid()})"
