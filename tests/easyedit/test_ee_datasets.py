"""EasyEdit's own dataset classes read files in their formats; the cases go through BaseEditor to this package.

EasyEdit's ``CounterFactDataset`` reads CounterFact in EasyEdit's format; its ``ZsreDataset`` reads
ZsRE in MEND's format (and drops ``subject``, which locate-then-edit methods need, so the subject
comes from the file as in EasyEdit's own examples). This package's loaders read the same files to
the same edits. EasyEdit 14cea82's ``BaseEditor`` has no ``edit_dataset`` (only its multimodal and
personality editors do), so dataset items reach it through ``edit``, as in EasyEdit's examples.
"""

from __future__ import annotations

import json

import pytest

from ee_support import ROWS, rewrite_accs, tiny_hparams

from betaedit_plugin.data import load_counterfact, load_zsre


def counterfact_records(rows=ROWS):
    """CounterFact records in EasyEdit's format."""
    return [{"case_id": i, "prompt": r[0], "subject": r[1], "target_new": r[2], "ground_truth": r[3],
             "rephrase_prompt": r[4], "locality_prompt": r[5], "locality_ground_truth": r[6]}
            for i, r in enumerate(rows)]


def zsre_records(rows=ROWS):
    """ZsRE records in MEND's format (questions; single-token answers for the tiny model)."""
    return [{"subject": r[1], "src": f"{r[0]}?", "pred": r[3], "rephrase": f"{r[4]}?", "alt": r[2],
             "answers": [r[3]], "loc": f"nq question: {r[5].lower()}", "loc_ans": r[6],
             "cond": f"{r[3]} >> {r[2]} || {r[0]}?"} for r in rows]


def edit_lists(records, subjects) -> dict:
    """BaseEditor.edit arguments from dataset items (EasyEdit's examples build the same lists)."""
    return dict(
        prompts=[d["prompt"] for d in records], target_new=[d["target_new"] for d in records],
        ground_truth=[d["ground_truth"] for d in records], subject=subjects,
        rephrase_prompts=[d["rephrase_prompt"] for d in records],
        locality_inputs={"neighborhood": {"prompt": [d["locality_prompt"] for d in records],
                                          "ground_truth": [d["locality_ground_truth"] for d in records]}},
    )


@pytest.mark.parametrize("method", ["BetaEdit", "MEMIT"])
def test_counterfact_dataset_through_base_editor(easyedit, tiny_checkpoint, tmp_path, capsys, method):
    path = tmp_path / "counterfact-edit.json"
    path.write_text(json.dumps(counterfact_records()))
    ds = easyedit.CounterFactDataset(str(path), size=3)
    items = [ds[i] for i in range(len(ds))]
    assert len(items) == 3
    assert [(r.prompt, r.subject, r.target_new) for r in load_counterfact(path, n=3)] == \
           [(d["prompt"], d["subject"], d["target_new"]) for d in items]

    editor = easyedit.BaseEditor.from_hparams(tiny_hparams(method, tiny_checkpoint("llama"), str(tmp_path)))
    metrics, _, _ = editor.edit(**edit_lists(items, [d["subject"] for d in items]), sequential_edit=True,
                                verbose=False)
    assert rewrite_accs(metrics, "pre") == [0.0] * 3 and rewrite_accs(metrics, "post") == [1.0] * 3
    capsys.readouterr()
    easyedit.summary_metrics(metrics)
    assert "'post': {'rewrite_acc': np.float64(1.0)" in capsys.readouterr().out


def test_zsre_dataset_through_base_editor(easyedit, tiny_checkpoint, tmp_path, capsys):
    raw = zsre_records()
    path = tmp_path / "zsre_mend_eval.json"
    path.write_text(json.dumps(raw))
    ds = easyedit.ZsreDataset(str(path), size=3)
    items = [ds[i] for i in range(len(ds))]
    assert [d["prompt"] for d in items] == [r["src"] for r in raw[:3]]
    assert "subject" not in items[0]  # EasyEdit's ZsreDataset drops it
    ours = load_zsre(path, n=3)
    assert [(r.prompt, r.target_new, r.ground_truth) for r in ours] == \
           [(d["prompt"], d["target_new"], d["ground_truth"]) for d in items]
    assert ours[0].locality_prompts == (items[0]["locality_prompt"][len("nq question: "):],)

    hp = tiny_hparams("BetaEdit", tiny_checkpoint("qwen3"), str(tmp_path))
    editor = easyedit.BaseEditor.from_hparams(hp)
    with pytest.raises(ValueError, match="subject=None"):  # a ZsreDataset item as it is: no subject
        easyedit.executors["BetaEdit"].apply_to_model(editor.model, editor.tok, [items[0]], hp)
    subjects = [raw[d["case_id"]]["subject"] for d in items]
    metrics, _, _ = editor.edit(**edit_lists(items, subjects), sequential_edit=True, verbose=False)
    assert rewrite_accs(metrics, "pre") == [0.0] * 3 and rewrite_accs(metrics, "post") == [1.0] * 3
    capsys.readouterr()
    easyedit.summary_metrics(metrics)
    out = capsys.readouterr().out
    assert "Metrics Summary" in out and "neighborhood_acc" in out

