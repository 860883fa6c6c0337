"""A run's out_dir is its own (issue 19): the hold on it is taken before anything is written there and
a refused run touches nothing of it (real processes racing); environment faults are user errors
that leave nothing behind; outputs are atomic and stale temporary files go on the next run."""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from support.runs import REPO, assert_one_line_exit_2, cli, repo_env, write_cases

from betaedit_plugin.run import main, precheck
from betaedit_plugin.runner import ConfigError, run_experiment
from betaedit_plugin.runner.experiment import RUN_LOCK, RUN_PID

TINY = ["model=tiny-llama", "num_edits=2", "eval_every=2", "checkpoint_every=1", "eval.mmlu_n=2", "eval.ppl_tokens=48",
        "eval.ppl_window=24", "eval.fluency_prompts=1", "eval.fluency_tokens=2", "hparams.v_num_grad_steps=2",
        "progress=false"]


def _tiny(tmp: Path, *extra: str) -> list:
    """Overrides of a tiny run whose statistics and comparison live under ``tmp``."""
    return [*TINY, f"hparams.stats_dir={tmp / 'stats'}", f"run_root={tmp / 'runs'}", *extra]


def _compose(overrides: list) -> dict:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from betaedit_plugin.runner import CONF_DIR
    from betaedit_plugin.runner.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return OmegaConf.to_container(compose(config_name="config", overrides=overrides), resolve=True)


def _files(root: Path) -> dict:
    """Every entry under ``root``: relative path -> (inode, size, mtime) (directories: inode only)."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(root))] = (st.st_ino,) if p.is_dir() else (st.st_ino, st.st_size, st.st_mtime_ns)
    return out


def _main_exit(capsys, args: list):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    return capsys.readouterr().err, exit_info.value.code


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """A tiny run stopped after edit 1 of 2 (checkpoint step 1): (its tmp, its out_dir)."""
    tmp = tmp_path_factory.mktemp("stopped")
    out = tmp / "out"
    results = run_experiment(_compose(_tiny(tmp, f"out_dir={out}", "stop_after=1")))
    assert results["status"] == "stopped" and [p.name for p in (out / "checkpoints").iterdir()] == ["step-0000001"]
    return tmp, out


# ---------------------------------------------------------------------------- two runs on one out_dir
_RACER = r"""
import runpy, sys
from pathlib import Path
import betaedit_plugin.runner.experiment as experiment

def hold_and_wait(cfg, identity, hparams, requests, ckpt):
    # stands in for the run's work (loading the model, statistics ...: nothing written in out_dir for
    # a while): wait until the test lets it finish, then write a result
    print("@@holding", flush=True)
    sys.stdin.readline()
    (Path(cfg["out_dir"]) / "results.json").write_text("{}")
    return {"method": "betaedit", "alg_name": "BetaEdit", "model": "tiny", "data": "cases", "edits_done": 0,
            "status": "complete", "evals": [], "timing": {}, "plots": []}

experiment._run_locked = hold_and_wait
print("@@ready", flush=True)
while True:
    line = sys.stdin.readline()
    if not line:
        break
    sys.argv = ["betaedit-run", *ARGS, "out_dir=" + line.strip()]
    try:
        runpy.run_module("betaedit_plugin.run", run_name="__main__")  # as python -m betaedit_plugin.run
        print("@@done", flush=True)
    except SystemExit as exc:  # python -m exits with main()'s status: 0 is done
        print("@@done" if exc.code in (0, None) else f"@@exit {exc.code}", flush=True)
"""


class _Racer:
    """A process that runs the command line on each out_dir it is sent (`_RACER`); its run, once
    it holds out_dir, waits for an empty line."""

    def __init__(self, args: list, cwd: Path) -> None:
        script = _RACER.replace("ARGS", repr(list(args)))
        self.proc = subprocess.Popen([sys.executable, "-c", script], cwd=cwd, env=repo_env(), text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.pid = self.proc.pid
        self.lines: "queue.Queue" = queue.Queue()
        self.errors: "queue.Queue" = queue.Queue()
        for stream, sink in ((self.proc.stdout, self.lines), (self.proc.stderr, self.errors)):
            threading.Thread(target=self._pump, args=(stream, sink), daemon=True).start()
        assert self.said() == "ready"

    @staticmethod
    def _pump(stream, sink) -> None:
        for line in stream:
            sink.put(line)
        sink.put(None)

    def send(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def said(self, timeout: float = 300) -> str:
        """The next protocol line (``@@...``) without its marker."""
        while True:
            line = self.lines.get(timeout=timeout)
            assert line is not None, f"the racer ended: {self.proc.wait()}"
            if line.startswith("@@"):
                return line[2:].strip()

    def error(self, timeout: float = 60) -> str:
        """The next line the command line printed as a user error."""
        while True:
            line = self.errors.get(timeout=timeout)
            assert line is not None, "the racer ended"
            if line.startswith("betaedit-run: error: "):
                return line

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=60)


def test_two_runs_started_together_never_remove_each_others_files(tmp_path):
    """Two processes start the command line on one new out_dir at the same moment, 20 times: one
    holds it, the other is refused (exit 2, the holder's pid) and leaves every file of the live run
    as it was (lock, pid, Hydra's log); a third run while it goes on is refused too."""
    data = write_cases(tmp_path / "cases.json")
    args = _tiny(tmp_path, f"data.path={data}")
    racers = [_Racer(args, tmp_path) for _ in range(2)]
    try:
        for trial in range(20):
            out = tmp_path / f"trial{trial}" / "out"  # not there yet: both processes make it
            for racer in racers:
                racer.send(str(out))
            said = [racer.said() for racer in racers]
            assert sorted(said) == ["exit 2", "holding"], (trial, said)
            holder, refused = racers if said[0] == "holding" else racers[::-1]
            assert f"out_dir='{out}' is in use by another betaedit-run process (pid {holder.pid})" in refused.error()
            live = _files(out)
            assert set(live) == {RUN_LOCK, RUN_PID, "run.log"}, (trial, live)
            assert (out / RUN_PID).read_text().strip() == str(holder.pid)
            refused.send(str(out))  # a third run while the first one runs
            assert refused.said() == "exit 2" and f"(pid {holder.pid})" in refused.error()
            assert _files(out) == live, trial
            holder.send("")
            assert holder.said() == "done"
            assert sorted(p.name for p in out.iterdir()) == [RUN_LOCK, "results.json", "run.log"]

        # the third as its own process, with the command line's real run
        out = tmp_path / "third" / "out"
        racers[0].send(str(out))
        assert racers[0].said() == "holding"
        live = _files(out)
        proc = cli(args + [f"out_dir={out}"], cwd=tmp_path)
        assert_one_line_exit_2(proc.stderr, proc.returncode, f"out_dir='{out}' is in use by another betaedit-run "
                               f"process (pid {racers[0].pid}); wait for it to finish or use another out_dir")
        assert _files(out) == live
        racers[0].send("")
        assert racers[0].said() == "done"
    finally:
        for racer in racers:
            racer.stop()


def test_a_refused_hold_removes_nothing_and_an_undone_hold_removes_what_it_made(tmp_path):
    """A hold refused on a held out_dir removes nothing; one that undoes itself removes its lock
    file, pid and the directories it made."""
    from betaedit_plugin._fileio import exclusive_lock
    from betaedit_plugin.runner.paths import OutDirHold

    out = tmp_path / "a" / "out"
    with exclusive_lock(out / RUN_LOCK, out / RUN_PID):
        before = _files(tmp_path)
        with pytest.raises(ConfigError, match=rf"is in use by another betaedit-run process \(pid {os.getpid()}\)"):
            OutDirHold(out).acquire()  # this process holds it through another file description: refused too
        assert _files(tmp_path) == before

    shutil.rmtree(tmp_path / "a")
    hold = OutDirHold(out).acquire()
    assert [p.name for p in hold.created_dirs] == ["a", "out"] and hold.lock.created
    hold.release(undo=True)
    assert not (tmp_path / "a").exists()  # nothing left: lock, pid and the directories it made



def test_a_hold_that_rewrote_files_keeps_its_log_and_one_that_wrote_nothing_but_logs_is_undone_on_request(tmp_path):
    """A resumed run adds no names to out_dir (it rewrites results.json, adds journal chunks and
    checkpoints): its log stays as written. A user error that wrote only its log cuts the log back."""
    from betaedit_plugin._fileio import atomic_write_text
    from betaedit_plugin.runner.paths import OutDirHold

    out = tmp_path / "out"
    (out / "journal").mkdir(parents=True)
    (out / "run.log").write_text("the first run\n")
    (out / "results.json").write_text("{}")
    rewrites = (lambda: atomic_write_text(out / "results.json", '{"status": "complete"}'),
                lambda: (out / "journal" / "chunk-0000001-0000002.safetensors").write_bytes(b"x"))
    for times, rewrite in enumerate(rewrites, 1):
        hold = OutDirHold(out).acquire()
        with open(out / "run.log", "a") as log:
            log.write("resumed\n")
        rewrite()
        hold.release(undo=True)  # even a user error after that: the results stay, and the log with them
        assert (out / "run.log").read_text() == "the first run\n" + "resumed\n" * times
        assert not (out / RUN_PID).exists()

    before = (out / "run.log").read_text()
    hold = OutDirHold(out).acquire()
    with open(out / "run.log", "a") as log:
        log.write("a user error\n")
    hold.release(undo=True)
    assert (out / "run.log").read_text() == before


def test_a_resumed_run_appends_to_its_log(tmp_path):
    """The command line's log of a run continued with resume=true follows what the earlier parts
    logged, also when the part adds no file to out_dir (the campaign's runs, 100 edits at a time)."""
    data = write_cases(tmp_path / "cases.json")
    out = tmp_path / "out"
    logs = []
    for part in ("stop_after=1", "stop_after=2", "stop_after=null"):
        proc = cli(_tiny(tmp_path, f"data.path={data}", f"out_dir={out}", "num_edits=3", "eval_every=1", "resume=true", part),
                   cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        logs.append((out / "run.log").read_text())
    assert "checkpoint at step 1" in logs[0]
    for before, after in zip(logs, logs[1:]):
        assert after.startswith(before) and "resumed from" in after[len(before):]
    assert json.loads((out / "results.json").read_text())["status"] == "complete"


def test_a_lock_file_removed_by_its_holder_is_never_held_twice(tmp_path, monkeypatch):
    """A process that opened the lock file just before its holder removed it (on release) locks the
    old file: try_lock sees that it is no longer the one at the path and locks a fresh one, so a
    third process is refused instead of holding it at the same time."""
    from betaedit_plugin import _fileio

    path = tmp_path / RUN_LOCK
    first = _fileio.try_lock(path)
    stale_fd = os.open(path, os.O_RDONLY)  # the late process's open, before the removal
    first.release(remove=True)
    assert not path.exists()
    opened, real_open = [], os.open

    def open_late(name, flags, *mode):
        opened.append(name)
        return stale_fd if len(opened) == 1 else real_open(name, flags, *mode)

    monkeypatch.setattr(_fileio.os, "open", open_late)
    late = _fileio.try_lock(path)
    monkeypatch.undo()
    assert len(opened) == 2 and os.fstat(late._fd).st_ino == path.stat().st_ino  # the fresh file
    with pytest.raises(_fileio.LockHeldError):
        _fileio.try_lock(path)
    late.release()

# ---------------------------------------------------------------------------- environment faults
def _unprivileged() -> list:
    """A command prefix under which file permissions apply (root: without its override), or []."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("runs as root and setpriv is missing: permissions cannot be tested")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search"]


def test_an_unwritable_out_dir_or_checkpoints_dir_is_a_user_error_before_any_edit(stopped_run, tmp_path):
    prefix = _unprivileged()
    tmp, stopped = stopped_run
    out = tmp_path / "out"
    shutil.copytree(stopped, out)
    before = _files(out)
    (out / "checkpoints").chmod(0o555)
    try:
        proc = cli(_tiny(tmp, f"out_dir={out}", "resume=true"), cwd=tmp_path, prefix=prefix)
    finally:
        (out / "checkpoints").chmod(0o755)
    assert_one_line_exit_2(proc.stderr, proc.returncode, f"out_dir='{out}': '{out / 'checkpoints'}' is not writable "
                           "(PermissionError: Permission denied); make it writable (chmod u+w) or use another out_dir")
    assert _files(out) == before  # no edit, no log, no lock left

    out.chmod(0o555)
    try:
        proc = cli(_tiny(tmp, f"out_dir={out}", "resume=true"), cwd=tmp_path, prefix=prefix)
    finally:
        out.chmod(0o755)
    assert_one_line_exit_2(proc.stderr, proc.returncode, f"out_dir='{out}' is not writable (PermissionError")
    assert _files(out) == before


def test_betaedit_cache_or_stats_dir_that_is_a_file_is_a_user_error_before_the_model(tmp_path, capsys, monkeypatch):
    a_file = tmp_path / "cache"
    a_file.write_text("not a directory")
    monkeypatch.setenv("BETAEDIT_CACHE", str(a_file))
    err, code = _main_exit(capsys, [*TINY, f"out_dir={tmp_path / 'out'}"])
    assert_one_line_exit_2(err, code, f"BETAEDIT_CACHE='{a_file}' is a file, not a directory; set BETAEDIT_CACHE to "
                           "a directory, or unset it")
    monkeypatch.delenv("BETAEDIT_CACHE")
    err, code = _main_exit(capsys, [*TINY, f"hparams.stats_dir={a_file / 'stats'}", f"out_dir={tmp_path / 'out'}"])
    assert_one_line_exit_2(err, code, f"hparams.stats_dir='{a_file / 'stats'}': '{a_file}' is a file, not a directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]


def test_a_symlink_loop_or_dangling_link_as_out_dir_is_a_user_error(tmp_path, capsys):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere" / "x")
    cases = [(loop, f"out_dir='{loop}' is a symbolic link loop; give a directory path"),
             (loop / "run", f"out_dir='{loop / 'run'}': '{loop}' is a symbolic link loop"),
             (dangling, f"out_dir='{dangling}' is a symbolic link to '{tmp_path / 'nowhere' / 'x'}', which does not exist")]
    for out, needle in cases:
        err, code = _main_exit(capsys, [*TINY, f"out_dir={out}"])
        assert_one_line_exit_2(err, code, needle)
        with pytest.raises(ConfigError, match="symbolic link"):
            run_experiment(_compose(_tiny(tmp_path, f"out_dir={out}")))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling", "loop"]


def test_an_out_dir_hydra_cannot_parse_gets_a_hint_to_quote_it(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err, code = _main_exit(capsys, [*TINY, "out_dir=runs/ü 日本 run"])
    assert_one_line_exit_2(err, code, "out_dir='runs/ü 日本 run': Hydra's override grammar does not take this value "
                           "unquoted (LexerNoViableAltException", """quote it: "out_dir='runs/ü 日本 run'\"""")
    assert precheck([*TINY, "out_dir='runs/ü 日本 run'"]) == ["runs/ü 日本 run"]  # quoted, it is taken
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------- data
def test_a_json_lines_data_file_is_taken_and_a_target_equal_to_the_truth_is_invalid(tmp_path, capsys):
    from betaedit_plugin.runner.config import load_requests, validate_config

    cases = write_cases(tmp_path / "cases.jsonl", json_lines=True)
    assert len(precheck([*TINY, f"data.path={cases}", "num_edits=3", f"out_dir={tmp_path / 'out'}"])) == 1

    same = write_cases(tmp_path / "same.json", {1: {"target_new": "English", "ground_truth": "English"}})
    err, code = _main_exit(capsys, [*TINY, f"data.path={same}", "num_edits=3", f"out_dir={tmp_path / 'out'}"])
    assert_one_line_exit_2(err, code, f"data.path='{same}'", "1 invalid record(s): record 1: target_new='English' "
                           "equals ground_truth", "data.skip_invalid=true")
    assert not (tmp_path / "out").exists()

    # the bundled ZsRE split holds such records; its config skips them (listed in results.json)
    with pytest.warns(UserWarning, match=r"skipped 1 invalid record\(s\) \(case_ids \[112\]\)"):
        requests = load_requests(validate_config(_compose([*TINY, "data=zsre", "num_edits=120"])))
    assert len(requests) == 120 and [b.case_id for b in requests.skipped] == [112]


# ---------------------------------------------------------------------------- outputs
def test_stale_temporary_files_are_removed_by_the_next_run(stopped_run, tmp_path):
    """What a run killed while writing leaves (atomic writes' temporaries, an unfinished checkpoint
    directory) goes when the next run holds out_dir; files of the user stay."""
    tmp, stopped = stopped_run
    out = tmp_path / "out"
    shutil.copytree(stopped, out)
    stale = [".metrics.csv.abcd_123.tmp", ".efficacy.png.k2j4h5g6.tmp", ".results.json.q1w2e3r4.tmp",
             "checkpoints/.manifest.json.z9y8x7w6.tmp", "checkpoints/step-0000005.tmp/results.json"]
    kept = ["notes.tmp", ".my.tmp", "checkpoints/README"]
    for name in stale + kept:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text("x")
    results = run_experiment(_compose(_tiny(tmp, f"out_dir={out}", "resume=true")))
    assert results["status"] == "complete" and results["resumed_from"] == 1
    assert [n for n in stale if (out / n).exists()] == [] and not (out / "checkpoints" / "step-0000005.tmp").exists()
    assert all((out / n).read_text() == "x" for n in kept)
    assert all((out / png).stat().st_size > 1000 for png in results["plots"])
    assert json.loads((out / "results.json").read_text())["status"] == "complete"


def test_plots_are_written_atomically(tmp_path, monkeypatch):
    """A plot that fails midway (a full disk, a kill) leaves the previous PNG whole and no temporary."""
    import matplotlib.figure

    from betaedit_plugin.eval.plots import plot_runs

    points = [{"step": 0, "efficacy": 0.1, "perturbation": 0.0}, {"step": 2, "efficacy": 0.9, "perturbation": 1.5}]
    written = plot_runs({"betaedit": points}, tmp_path)
    assert sorted(p.name for p in written) == ["efficacy.png", "perturbation.png"]
    before = {p.name: p.read_bytes() for p in written}

    def broken_savefig(self, fname, **kw):
        Path(fname).write_bytes(b"\x89PNG partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", broken_savefig)
    with pytest.raises(OSError, match="No space left"):
        plot_runs({"betaedit": points}, tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
