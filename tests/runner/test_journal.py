"""The run journal: a run stopped, its checkpoints deleted, resumed from the journal alone ends with
bit-identical weights and the same metrics; corrupt, foreign and diverging journals are refused;
`replay` rebuilds the edited model; fixed targets and target banks."""

from __future__ import annotations

import json
import math
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from betaedit_plugin._fileio import read_tensors, tensor_sha256, write_tensors
from betaedit_plugin.methods import METHODS, get_method
from betaedit_plugin.runner import ConfigError, run_experiment
from betaedit_plugin.runner.journal import Journal, JournalError, compare_fingerprint

from test_checkpoint import _REPO, _env, _tiny_run  # tests/runner is on sys.path (rootdir conftest, no packages)

get_method("BetaEdit")  # the shipped methods are registered
ALL_METHODS = sorted(m.cli_name for m in METHODS)


def _cfg(tmp_path, out_dir, *extra):
    """`test_checkpoint`'s tiny run, 5 edits, chunks of 2 steps, no MMLU or fluency (later overrides win)."""
    return _tiny_run(tmp_path, out_dir, "num_edits=5", "journal_chunk=2", "eval.mmlu_n=0", "eval.fluency_prompts=0", *extra)


def _metrics(point):
    return {k: v for k, v in point.items() if isinstance(v, float) and not k.endswith("_s")}


def _chunks(out_dir):
    return sorted(p.name for p in (Path(out_dir) / "journal").iterdir())


#: BetaEdit collecting C0 again from the edited model at its refreshes (at 2 and 4): a replay collects it again
RECOLLECT = "betaedit+recollect_c0"


def _method_args(method: str) -> tuple:
    if method == RECOLLECT:
        return "method=betaedit", "hparams.tau=2", "hparams.recollect_c0=true"
    return (f"method={method}",)


@pytest.mark.parametrize("method", [*ALL_METHODS, RECOLLECT])
def test_resume_from_the_journal_alone_ends_bit_identical(tmp_path, method):
    whole = run_experiment(_cfg(tmp_path, tmp_path / "whole", *_method_args(method)))
    if method == RECOLLECT:  # the run's setting, and what its refreshes recorded
        assert whole["hparams"]["recollect_c0"] is True and whole["identity"]["hparams"]["recollect_c0"] is True
        refreshes = [e["refresh"] for e in whole["edits"] if e.get("refresh")]
        assert [r["2"]["step"] for r in refreshes] == [2, 4] and all(r["2"]["c0_change"] > 0 for r in refreshes)
    out = tmp_path / "resumed"
    stopped = run_experiment(_cfg(tmp_path, out, *_method_args(method), "stop_after=3"))
    assert stopped["status"] == "stopped" and "tail.safetensors" in _chunks(out)
    shutil.rmtree(out / "checkpoints")  # what a fresh clone of a repository with the journal committed has
    (out / "results.json").unlink()
    resumed = run_experiment(_cfg(tmp_path, out, *_method_args(method), "resume=true"))
    assert resumed["status"] == "complete" and resumed["replayed"]["to_step"] == 3
    assert resumed["replayed"]["fingerprints"] == 1 and resumed["replayed"]["identical"] == 1  # step 2's weights
    # every evaluation point (those lost with results.json were evaluated during the replay) and the final weights
    assert [p["step"] for p in resumed["evals"]] == [p["step"] for p in whole["evals"]] == [0, 2, 4, 5]
    windows = whole["evals"][-1]["outcomes"]["ppl"]  # the perplexity's windows, kept to pair it with others
    assert math.exp(sum(t for t, _ in windows) / sum(n for _, n in windows)) == pytest.approx(whole["evals"][-1]["ppl"], rel=1e-12)
    for a, b in zip(whole["evals"], resumed["evals"]):
        assert _metrics(a) == _metrics(b), a["step"]
    final_whole, final_resumed = Journal.open(tmp_path / "whole"), Journal.open(out)
    assert final_whole.records[-1].fingerprint == final_resumed.records[-1].fingerprint  # sha256 of every W_t
    assert [r.step for r in final_resumed.records] == [1, 2, 3, 4, 5]
    # the stopped run's tail (step 3) went on to step 4 and became a chunk; the end sealed step 5; no tail
    assert _chunks(out) == ["chunk-0000001-0000002.safetensors", "chunk-0000003-0000004.safetensors",
                            "chunk-0000005-0000005.safetensors", "header.safetensors"]
    for a, b in zip(final_whole.records, final_resumed.records):
        assert torch.equal(a.z_star, b.z_star) and a.requests == b.requests


def test_a_checkpoint_behind_the_journal_replays_the_steps_after_it(tmp_path):
    out = tmp_path / "out"
    whole = run_experiment(_cfg(tmp_path, tmp_path / "whole"))
    run_experiment(_cfg(tmp_path, out, "stop_after=3", "checkpoint_every=2"))  # checkpoint at 2 and at the stop, 3
    ckpts = sorted((out / "checkpoints").iterdir())
    shutil.rmtree(ckpts[-1])  # the newest checkpoint is lost; step-2 is not kept (keep_checkpoints=1): rebuild one
    run_experiment(_cfg(tmp_path, tmp_path / "two", "stop_after=2"))
    shutil.copytree(tmp_path / "two" / "checkpoints", out / "checkpoints", dirs_exist_ok=True)
    resumed = run_experiment(_cfg(tmp_path, out, "resume=true"))
    assert resumed["resumed_from"] == 2 and resumed["replayed"] == {
        "from_step": 2, "to_step": 3, "fingerprints": 0, "identical": 0, "max_rel_diff": 0.0}
    assert Journal.open(out).records[-1].fingerprint == Journal.open(tmp_path / "whole").records[-1].fingerprint
    assert _metrics(resumed["evals"][-1]) == _metrics(whole["evals"][-1])


def test_a_corrupt_or_foreign_journal_is_refused_before_the_model_is_loaded(tmp_path, monkeypatch):
    out = tmp_path / "out"
    run_experiment(_cfg(tmp_path, out, "stop_after=3"))
    shutil.rmtree(out / "checkpoints")
    import betaedit_plugin.runner.experiment as experiment

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(experiment, "_load_model", no_model)
    (out / "results.json").unlink()  # (results.json of another run is refused the same way)
    with pytest.raises(ConfigError, match=r"holds the journal of another run \(hparams.lambda1='<unset>' there, 50.0 here\)"):
        run_experiment(_cfg(tmp_path, out, "resume=true", "hparams.lambda1=50"))
    with pytest.raises(ConfigError, match=r"holds the journal of 3 edits of this run; resume=true continues it"):
        run_experiment(_cfg(tmp_path, out))

    chunk = out / "journal" / "chunk-0000001-0000002.safetensors"
    raw = bytearray(chunk.read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    start, _ = json.loads(raw[8:8 + n])["z_star.2"]["data_offsets"]
    raw[8 + n + start + 3] ^= 0x20  # one bit of step 2's z*
    pristine = chunk.read_bytes()
    chunk.write_bytes(bytes(raw))
    with pytest.raises(ConfigError, match=r"tensor 'z_star.2' does not match the sha256 stored with it"):
        run_experiment(_cfg(tmp_path, out, "resume=true"))
    chunk.write_bytes(pristine)
    chunk.unlink()  # steps 1-2 lost: the tail's step 3 follows nothing
    with pytest.raises(ConfigError, match=r"step 3 does not follow step 0"):
        run_experiment(_cfg(tmp_path, out, "resume=true"))


def test_resume_refuses_a_run_begun_with_another_yaml_and_continues_with_it(tmp_path, monkeypatch):
    """The identity holds the config's overrides, not what the YAML said: a YAML edited since a run
    began is refused on resume (from results.json, or the journal's header alone), naming the
    field, before the model is loaded and without touching out_dir."""
    import yaml

    import betaedit_plugin.runner.experiment as experiment

    src = _REPO / "hparams" / "BetaEdit" / "smollm2-135m.yaml"
    yaml_file = tmp_path / "hp" / "BetaEdit" / "smollm2-135m.yaml"
    yaml_file.parent.mkdir(parents=True)
    yaml_file.write_text(src.read_text())
    out = tmp_path / "out"
    hp_dir = f"hparams_dir={tmp_path / 'hp'}"
    run_experiment(_cfg(tmp_path, out, hp_dir, "stop_after=3"))
    original = yaml.safe_load(src.read_text())
    yaml_file.write_text(yaml.safe_dump({**original, "lambda2": original["lambda2"] * 2}))

    loaded = []
    real_load = experiment._load_model
    monkeypatch.setattr(experiment, "_load_model", lambda *a, **k: loaded.append(1) or real_load(*a, **k))
    files = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(ConfigError, match=rf"holds a run begun with hparams.lambda2={float(original['lambda2'])!r} \(its "
                                          rf"results.json\); this configuration resolves it to {float(original['lambda2'] * 2)!r}"):
        run_experiment(_cfg(tmp_path, out, hp_dir, "resume=true"))
    shutil.rmtree(out / "checkpoints")
    (out / "results.json").unlink()  # a journal alone (its header holds the resolved settings)
    with pytest.raises(ConfigError, match=r"hparams.lambda2=.* \(its journal\).*hparams_dir="):
        run_experiment(_cfg(tmp_path, out, hp_dir, "resume=true"))
    assert not loaded and all(p.read_bytes() == b for p, b in files.items() if p.exists())

    yaml_file.write_text(src.read_text())  # the YAML it began with: it goes on
    resumed = run_experiment(_cfg(tmp_path, out, hp_dir, "resume=true"))
    assert resumed["status"] == "complete" and resumed["replayed"]["to_step"] == 3 and loaded


def test_a_replay_that_diverges_stops_naming_the_step_and_layer(tmp_path):
    out = tmp_path / "out"
    run_experiment(_cfg(tmp_path, out, "stop_after=3"))
    shutil.rmtree(out / "checkpoints")
    chunk = out / "journal" / "chunk-0000001-0000002.safetensors"
    tensors, meta = read_tensors(chunk)
    tensors["z_star.1"] = tensors["z_star.1"] * 1.01  # other targets for step 1, sealed again
    write_tensors(chunk, tensors, meta)
    with pytest.raises(ConfigError, match=r"replay diverged at step 2, layer \d: \|\|W_t - W_0\|\|_F is"):
        run_experiment(_cfg(tmp_path, out, "resume=true"))

    saved = {"1": {"delta_norm": 2.0, "sha256": "a"}}
    assert compare_fingerprint(saved, {"1": {"delta_norm": 2.0 * (1 + 5e-5), "sha256": "b"}}, 7) == {
        "identical": False, "max_rel_diff": pytest.approx(5e-5)}
    with pytest.raises(JournalError, match=r"step 7, layer 1"):
        compare_fingerprint(saved, {"1": {"delta_norm": 2.0 * (1 + 5e-4), "sha256": "b"}}, 7)


@pytest.fixture(scope="module")
def five_edits(tmp_path_factory):
    """`_cfg`'s 5-edit run without checkpoints (points at 0, 2, 4 and the final 5), computed once for the
    replay tests; each works on its own copy (`_copy`)."""
    tmp = tmp_path_factory.mktemp("five")
    run_experiment(_cfg(tmp, tmp / "out", "checkpoint_every=0"))
    return tmp / "out"


def _copy(run, tmp_path):
    shutil.copytree(run, tmp_path / "out")
    return tmp_path / "out"


def test_replay_rebuilds_the_edited_model_and_its_metrics(five_edits, tmp_path):
    out = _copy(five_edits, tmp_path)
    results = json.loads((out / "results.json").read_text())
    saved = tmp_path / "edited.safetensors"
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    env = dict(_env(), OMP_NUM_THREADS="2")  # as this process (conftest): the same summation order, bit for bit
    proc = subprocess.run([sys.executable, "-m", "betaedit_plugin.run", "replay", str(out), "--save", str(saved)],
                          cwd=_REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    # fingerprints at the evaluation points 2, 4 and the final step 5
    assert "replayed 5 edits" in proc.stdout and "3 weight fingerprints checked, 3 bit-identical" in proc.stdout, proc.stdout
    rows = {line.split()[0]: line.split() for line in proc.stdout.splitlines() if line.split()[:1] and line.split()[0] in ("efficacy", "specificity", "perturbation")}
    assert float(rows["efficacy"][1]) == pytest.approx(results["evals"][-1]["efficacy"])
    assert all(float(row[3]) == 0.0 for row in rows.values()), proc.stdout  # |recorded - replayed|
    weights, _ = read_tensors(saved, allow_unsealed=True)
    final = Journal.open(out).records[-1].fingerprint
    for layer, fp in final.items():
        assert tensor_sha256(weights[f"model.layers.{layer}.mlp.down_proj.weight"]) == fp["sha256"]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before  # the run's folder is only read


def test_the_newest_checkpoint_is_rescored_and_its_point_gains_only_the_outcomes_it_lacks(tmp_path):
    from betaedit_plugin.runner.replay import amend_point, replay_run

    out = tmp_path / "out"
    run_experiment(_cfg(tmp_path, out, "checkpoint_every=5"))  # checkpointed at its last step
    path = out / "results.json"
    raw = json.loads(path.read_text())
    kept = raw["evals"][-1]["outcomes"].pop("locality_acc")  # a point written before token locality's were kept
    path.write_text(json.dumps(raw, indent=1))
    got = replay_run(out, from_checkpoint=True)
    assert (got["steps"], got["fingerprints"], got["identical"]) == (5, 1, 1)  # the journal's fingerprint at 5
    assert got["differences"] and all(d == 0 for d in got["differences"].values()), got["differences"]
    # refused, and nothing written: a metric not reproduced, other cases scored
    before = path.read_bytes()
    worse = dict(got["replayed"], specificity=got["replayed"]["specificity"] + 0.2)
    with pytest.raises(ConfigError, match=r"specificity at step 5 not reproduced \(recorded .*\); nothing written"):
        amend_point(out, worse)
    with pytest.raises(ConfigError, match=r"the point at 5 scored other cases"):
        amend_point(out, dict(got["replayed"], scored_cases="0123"))
    assert path.read_bytes() == before
    # the CLI: re-score from the checkpoint and amend
    env = dict(_env(), OMP_NUM_THREADS="2")  # as this process (conftest): the same summation order, bit for bit
    proc = subprocess.run([sys.executable, "-m", "betaedit_plugin.run", "replay", str(out), "--from-checkpoint", "--amend"],
                          cwd=_REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "loaded the checkpoint of 5 edits" in proc.stdout and "added locality_acc to the point at step 5" in proc.stdout, \
        proc.stdout
    after = json.loads(path.read_text())
    assert after["evals"][-1]["outcomes"]["locality_acc"] == kept
    del after["evals"][-1]["outcomes"]["locality_acc"]
    assert after == raw  # every other value as it was
    assert amend_point(out, got["replayed"]) == []  # nothing left to add
    shutil.rmtree(out / "checkpoints")
    with pytest.raises(ConfigError, match=r"no checkpoint in .*replay the journal: drop --from-checkpoint"):
        replay_run(out, from_checkpoint=True)


def test_every_recorded_point_is_rescored_on_the_way_and_gains_the_outcomes_it_lacks(five_edits, tmp_path):
    from betaedit_plugin.runner.replay import amend_point, replay_run

    out = _copy(five_edits, tmp_path)  # points at 2, 4 and the final 5
    path = out / "results.json"
    raw = json.loads(path.read_text())
    kept = {p["step"]: p["outcomes"].pop("locality_acc") for p in raw["evals"] if p["step"] > 0}
    assert sorted(kept) == [2, 4, 5]
    raw["evals"][1]["specificity"] += 0.5  # the point at 2 as no re-scoring reproduces it
    digest = raw["evals"][2].pop("scored_cases")  # the point at 4 as written before points kept their cases' digest
    path.write_text(json.dumps(raw, indent=1))
    with pytest.raises(ConfigError, match=r"needs the journal replayed and evaluated; drop --from-checkpoint"):
        replay_run(out, from_checkpoint=True, on_point=print)
    env = dict(_env(), OMP_NUM_THREADS="2")  # as this process (conftest): the same summation order, bit for bit
    proc = subprocess.run([sys.executable, "-m", "betaedit_plugin.run", "replay", str(out), "--every-point", "--amend"],
                          cwd=_REPO, env=env, capture_output=True, text=True, timeout=600)
    # the earlier points as the journal passes them, each amended only where it was reproduced; then the last
    assert proc.returncode == 2 and "the points at steps 2 were not amended (not reproduced" in proc.stderr, proc.stderr
    lines = proc.stdout.splitlines()
    at = {step: next(i for i, line in enumerate(lines) if line.startswith(f"step {step}: ")) for step in (2, 4)}
    assert "largest |recorded - replayed| 0.5 (specificity)" in lines[at[2]], lines[at[2]]
    assert lines[at[2] + 1].startswith("  not amended: replay --amend: specificity at step 2 not reproduced")
    assert "largest |recorded - replayed| 0 " in lines[at[4]] and lines[at[4] + 1] == "  added locality_acc, scored_cases", \
        lines[at[4]:]
    assert "added locality_acc to the point at step 5" in proc.stdout, proc.stdout
    after = json.loads(path.read_text())
    assert {p["step"]: p["outcomes"].get("locality_acc") for p in after["evals"] if p["step"] > 0} == {2: None, 4: kept[4], 5: kept[5]}
    assert after["evals"][2].pop("scored_cases") == digest  # the same sample: it gains its digest, to be paired
    for p in after["evals"][2:]:
        del p["outcomes"]["locality_acc"]
    assert after == raw  # every other value as it was, the point at 2 untouched
    # again: only the point that still lacks (2) is scored; the last kept its outcomes and is not scored again
    before = path.read_bytes()
    again = subprocess.run([sys.executable, "-m", "betaedit_plugin.run", "replay", str(out), "--every-point", "--amend"],
                           cwd=_REPO, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 2 and "the points at steps 2 were not amended" in again.stderr, again.stderr
    assert [line.split(":")[0] for line in again.stdout.splitlines() if line.startswith("step ")] == ["step 2"], again.stdout
    assert "the point at step 5 kept every outcome already: not scored again" in again.stdout, again.stdout
    assert path.read_bytes() == before  # nothing written
    # a point without the digest that scored another number of cases is not the same sample: refused
    final = replay_run(out)["replayed"]  # the point at 5
    raw5 = json.loads(path.read_text())
    del raw5["evals"][3]["scored_cases"]
    raw5["evals"][3]["n_scored"] += 1
    path.write_text(json.dumps(raw5, indent=1))
    with pytest.raises(ConfigError, match=r"the point at 5 scored 6 cases, the re-scoring 5; nothing written"):
        amend_point(out, final)
    seen = []  # on_point only at the steps asked for (the CLI asks for the points that lack outcomes); the last is out["replayed"]
    assert replay_run(out, on_point=seen.append, at_steps=[4, 5])["replayed"]["step"] == 5
    assert [p["step"] for p in seen] == [4]
    seen = []  # the last step not among them: not scored again, and the edits after 4 not replayed
    got = replay_run(out, on_point=seen.append, at_steps=[4])
    assert [p["step"] for p in seen] == [4] and "replayed" not in got and (got["steps"], got["last_step"]) == (4, 5)


def test_the_unedited_models_point_is_rescored_before_the_first_edit_and_the_replay_stops_after_the_last_lacking(
        five_edits, tmp_path):
    from betaedit_plugin.runner.replay import replay_run

    out = _copy(five_edits, tmp_path)  # points at 0, 2, 4 and the final 5
    path = out / "results.json"
    raw = json.loads(path.read_text())
    kept = raw["evals"][0].pop("outcomes")  # a step-0 point written before points kept their outcomes
    assert raw["evals"][0]["step"] == 0 and {"specificity", "ppl"} <= set(kept)
    path.write_text(json.dumps(raw, indent=1))
    env = dict(_env(), OMP_NUM_THREADS="2")  # as this process (conftest): the same summation order, bit for bit
    proc = subprocess.run([sys.executable, "-m", "betaedit_plugin.run", "replay", str(out), "--every-point", "--amend"],
                          cwd=_REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "step 0: " in proc.stdout and "added " in proc.stdout, proc.stdout
    # only step 0 lacked: scored before the first edit, and no edit replayed
    assert "replayed 0 of 5 journaled edits (up to the last point that lacked outcomes)" in proc.stdout, proc.stdout
    assert "the point at step 5 kept every outcome already: not scored again" in proc.stdout, proc.stdout
    after = json.loads(path.read_text())
    assert after["evals"][0]["outcomes"] == kept  # as the run kept them
    del after["evals"][0]["outcomes"]
    assert after == raw  # every other value as it was
    # the steps asked for: 0 and 2, so the replay stops at 2, and the final step is not scored
    seen = []
    got = replay_run(out, on_point=seen.append, at_steps=[0, 2])
    assert [p["step"] for p in seen] == [0, 2] and got["steps"] == 2 and got["last_step"] == 5 and "replayed" not in got
    assert _metrics(seen[1]) == _metrics(raw["evals"][1])  # the point at 2 reproduced
    # with a model to save the whole journal is replayed: the saved model is the last step's
    got = replay_run(out, on_point=seen.append, at_steps=[0], save=str(tmp_path / "edited.safetensors"))
    assert got["steps"] == 5 and "replayed" not in got


def test_fixed_targets_come_from_a_bank_and_say_so(tmp_path):
    bank = tmp_path / "bank"
    b = run_experiment(_cfg(tmp_path, bank, "mode=bank", "num_edits=4"))
    assert list(b)[0] == "protocol" and b["protocol"].startswith("target bank") and not b["evals"]
    assert not (bank / "checkpoints").exists()
    out = tmp_path / "fixed"
    r = run_experiment(_cfg(tmp_path, out, "num_edits=4", "method=memit", "batch_size=2", f"targets={bank}"))
    assert list(r)[0] == "protocol" and r["protocol"].startswith(f"fixed targets from {bank}")
    assert (out / "report.md").read_text().startswith(f"> fixed targets from {bank}")
    used, banked = Journal.open(out), Journal.open(bank)
    assert [r_.step for r_ in used.records] == [2, 4]
    assert torch.equal(torch.cat([r_.z_star for r_ in used.records], 1), torch.cat([r_.z_star for r_ in banked.records], 1))
    # a bank moved elsewhere is the same targets: the run's identity holds the bank's hash, not its path
    moved = tmp_path / "moved"
    shutil.copytree(bank, moved)
    again = run_experiment(_cfg(tmp_path, out, "num_edits=4", "method=memit", "batch_size=2", f"targets={moved}",
                                "resume=true"))
    assert again["status"] == "complete" and again["identity"]["targets"] == r["identity"]["targets"]
    with pytest.raises(ConfigError, match=r"computed with hparams.v_lr=.*z\* depends on it"):
        run_experiment(_cfg(tmp_path, tmp_path / "x", "num_edits=4", f"targets={bank}", "hparams.v_lr=0.01"))
    with pytest.raises(ConfigError, match=r"hold no z\* for case_id"):
        run_experiment(_cfg(tmp_path, tmp_path / "y", "num_edits=5", f"targets={bank}"))


def test_a_fixed_target_run_can_trail_a_bank_still_being_computed(tmp_path):
    bank = tmp_path / "bank"
    partial = run_experiment(_cfg(tmp_path, bank, "mode=bank", "num_edits=4", "stop_after=2"))
    assert partial["status"] == "stopped" and partial["edits_done"] == 2
    out = tmp_path / "trailing"
    args = ("num_edits=4", "method=memit", "checkpoint_every=3", f"targets={bank}", "targets_wait=true")
    r = run_experiment(_cfg(tmp_path, out, *args))
    assert r["status"] == "stopped" and r["edits_done"] == 2  # stopped where the bank ends, no error
    assert (out / "checkpoints").exists()  # written at the stop, so that resuming replays nothing
    run_experiment(_cfg(tmp_path, bank, "mode=bank", "num_edits=4", "resume=true"))  # the bank goes on
    done = run_experiment(_cfg(tmp_path, out, *args, "resume=true"))
    assert done["status"] == "complete" and done["edits_done"] == 4
    whole = run_experiment(_cfg(tmp_path, tmp_path / "whole", "num_edits=4", "method=memit", f"targets={bank}"))
    # the same run as with the whole bank from the start: the same final metrics (||W_t - W_0|| included)
    assert _metrics(done["evals"][-1]) == _metrics(whole["evals"][-1])
    with pytest.raises(ConfigError, match="targets_wait"):
        run_experiment(_cfg(tmp_path, tmp_path / "z", "num_edits=4", "targets_wait=true"))


def test_journal_of_a_run_stores_only_what_an_edit_needs(tmp_path):
    out = tmp_path / "out"
    run_experiment(_cfg(tmp_path, out, "num_edits=2", "checkpoint_every=0"))
    journal = Journal.open(out)
    record = journal.records[0]
    assert sorted(record.requests[0]) == ["case_id", "prompt", "sha256", "subject", "target_new"]
    assert record.z_star.shape == (journal_dv(out), 1) and record.z_star.dtype == torch.float32
    assert journal.header["kind"] == "run" and journal.header["context_templates"][0] == ["{}"]


def journal_dv(out):
    from betaedit_plugin.models import load_model

    model, _ = load_model("tiny-llama")
    return model.config.hidden_size


def test_a_published_run_continues_from_its_journal(tmp_path):
    """publish.sh copies the journal with the results; restore.sh puts it back on a "fresh clone";
    resume=true then replays it and finishes the run, as the uninterrupted run does."""
    root = tmp_path / "runs"
    whole = run_experiment(_cfg(tmp_path, tmp_path / "whole", "checkpoint_every=0"))
    run_experiment(_cfg(tmp_path, root / "betaedit", "stop_after=3"))
    published = tmp_path / "published"
    env = dict(_env(), PYTHON=sys.executable)
    subprocess.run(["bash", str(_REPO / "results" / "publish.sh"), str(root), "x", "test"], cwd=tmp_path, env=env,
                   check=True, capture_output=True, timeout=300)
    shutil.move(str(_REPO / "results" / "x"), published)
    assert sorted(p.name for p in (published / "betaedit" / "journal").iterdir()) == [
        "chunk-0000001-0000002.safetensors", "header.safetensors", "tail.safetensors"]
    assert not (published / "betaedit" / "checkpoints").exists()
    shutil.rmtree(root)  # a fresh clone: no runs/ at all
    subprocess.run(["bash", str(_REPO / "results" / "restore.sh"), str(published), str(root)], check=True,
                   capture_output=True, timeout=60)
    done = run_experiment(_cfg(tmp_path, root / "betaedit", "resume=true"))
    assert done["status"] == "complete" and done["replayed"]["to_step"] == 3
    assert _metrics(done["evals"][-1]) == _metrics(whole["evals"][-1])
    assert Journal.open(root / "betaedit").records[-1].fingerprint == Journal.open(tmp_path / "whole").records[-1].fingerprint


def test_an_amended_point_gains_the_groups_of_the_metrics_it_gains():
    """MEMIT's CounterFact: several paraphrases and neighbourhood prompts a request. A point that kept
    the comparisons' groups before it kept some metric's tokens gains that metric's groups with them,
    else its paired interval would count each prompt as a case (too narrow)."""
    from betaedit_plugin.runner.replay import add_outcomes

    new = {"efficacy": "10", "generality": "1101", "rephrase_acc": "1 01 11 0", "locality_acc": "1 1 10",
           "groups": {"generality": "2 2", "rephrase_acc": "2 2", "locality_acc": "1 2"}}
    kept = {"efficacy": "10", "generality": "1101", "groups": {"generality": "2 2"}}
    assert add_outcomes(kept, new) == ["rephrase_acc", "locality_acc", "groups"]
    assert kept == new
    assert add_outcomes(kept, new) == [] and kept == new  # nothing left to add
    # a point written before groups were kept gains them for what it kept already (the same cases, reproduced)
    old = {"efficacy": "10", "generality": "1101"}
    assert add_outcomes(old, new) == ["rephrase_acc", "locality_acc", "groups"] and old == new
    # a metric that a request adds once to has no groups: none are made up
    single = {"efficacy": "10"}
    assert add_outcomes(single, {"efficacy": "10", "rewrite_acc": "1 0"}) == ["rewrite_acc"] and "groups" not in single
