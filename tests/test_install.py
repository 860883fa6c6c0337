"""The package installs like one: a wheel finds its YAMLs and edits from a local checkpoint directory.

The wheel test copies the source tree into a temporary directory (nothing is written into the
checkout), builds a wheel with ``pip wheel --no-deps --no-build-isolation``, installs it into a
fresh virtual environment that sees this environment's packages through a ``.pth`` file (so nothing
is downloaded), and runs one tiny-model edit there, from outside the source tree.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

from betaedit_plugin import BetaEditHyperParams, edit, hparams_path, load_hparams
from betaedit_plugin.models import TINY_ARCHS

REPO = Path(__file__).resolve().parents[1]

# Settings under which a tiny random model takes an edit (single-token targets; the value is
# written at the last prompt token, which the 4-layer model's prediction reads directly).
TINY_EDIT = dict(layers=[1, 2], v_loss_layer=-1, fact_token="last", v_num_grad_steps=20, v_lr=0.5,
                 clamp_norm_factor=10.0, v_weight_decay=0.0, kl_factor=0.0, lambda1=1.0, lambda2=0.1,
                 nullspace_threshold=0.3, mom2_n_samples=50, mom2_max_length=32,
                 context_template_length_params=[[5, 2]])
PROMPT, SUBJECT, TARGET = "The mother tongue of Danielle Darrieux is", "Danielle Darrieux", "German"


def _copy_source(dest: Path) -> Path:
    """The files a build needs, with betaedit_plugin/_hparams kept as a link to ../hparams."""
    src = dest / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(REPO / "betaedit_plugin", src / "betaedit_plugin", symlinks=True, ignore=ignore)
    shutil.copytree(REPO / "hparams", src / "hparams", ignore=ignore)
    for name in ("setup.cfg", "pyproject.toml", "README.md", "MANIFEST.in"):
        shutil.copy2(REPO / name, src / name)
    return src


@pytest.mark.slow
def test_wheel_installs_finds_its_yamls_and_edits(tmp_path):
    src = _copy_source(tmp_path)
    assert (src / "betaedit_plugin" / "_hparams").is_symlink()
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                    "-q", "-w", str(wheels), str(src)], check=True, capture_output=True, text=True)
    (wheel,) = wheels.glob("betaedit_plugin-*.whl")

    # one copy of each YAML, inside the package, identical to the top-level source
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        yamls = sorted(n for n in names if n.endswith(".yaml") and "/_hparams/" in n)
        assert not [n for n in names if n.startswith("hparams/")]
        assert len(yamls) == len(list((REPO / "hparams").glob("*/*.yaml")))
        for n in yamls:
            assert zf.read(n) == (REPO / "hparams" / n.split("/_hparams/", 1)[1]).read_bytes()

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    # this environment's packages (torch, transformers...) after the venv's own; .pth files in those
    # directories (this checkout's editable install) are not processed, so the wheel's copy wins
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "zz_reuse_test_env.pth").write_text("\n".join(sorted(ours)) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", "-q",
                    str(wheel)], check=True, capture_output=True, text=True)

    ckpt = tmp_path / "tiny-llama-checkpoint"
    script = textwrap.dedent(f"""
        import dataclasses, json, sys
        import betaedit_plugin
        from betaedit_plugin import BetaEditor, hparams_path, load_hparams
        from betaedit_plugin.models.tiny import build_tiny

        model, tok = build_tiny("llama")
        model.save_pretrained({str(ckpt)!r}); tok.save_pretrained({str(ckpt)!r})
        shipped = hparams_path("BetaEdit", "llama3-8b-instruct")
        hp = dataclasses.replace(load_hparams(hparams_path("BetaEdit", "smollm2-135m")), model_name={str(ckpt)!r},
                                 **{json.dumps(TINY_EDIT)})
        editor = BetaEditor.from_hparams(hp)
        metrics, _ = betaedit_plugin.edit(editor, prompts=[{PROMPT!r}], target_new=[{TARGET!r}], subject=[{SUBJECT!r}])
        print(json.dumps({{"package": betaedit_plugin.__file__, "shipped": str(shipped),
                          "llama3_layers": load_hparams(shipped).layers, "model_type": editor.layout.model_type,
                          "pre": metrics[0]["pre"]["rewrite_acc"][0], "post": metrics[0]["post"]["rewrite_acc"][0]}}))
    """)
    env = {**os.environ, "BETAEDIT_CACHE": str(tmp_path / "cache"), "PYTHONPATH": ""}
    run = subprocess.run([str(py), "-P", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert Path(out["package"]).is_relative_to(site), out["package"]
    assert Path(out["shipped"]).is_relative_to(site) and out["shipped"].endswith("_hparams/BetaEdit/llama3-8b-instruct.yaml")
    assert out["llama3_layers"] == [4, 5, 6, 7, 8]
    assert out["model_type"] == "llama"
    assert (out["pre"], out["post"]) == (0.0, 1.0)


def test_hparams_path_finds_the_shipped_yamls_and_names_bad_input():
    assert hparams_path("BetaEdit", "llama3-8b-instruct") == (REPO / "hparams/BetaEdit/llama3-8b-instruct.yaml").resolve()
    assert hparams_path("BE-AlphaEdit", "smollm2-135m.yaml").parent.name == "AlphaEdit"
    assert load_hparams(hparams_path("MEMIT", "gpt2-xl")).alg_name == "BE-MEMIT"
    with pytest.raises(KeyError, match="Did you mean 'llama3-8b-instruct'"):
        hparams_path("BetaEdit", "llama3-8b")
    with pytest.raises(KeyError, match="Did you mean 'BetaEdit'"):
        hparams_path("BetaEdt", "gpt2-xl")


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_model_name_may_be_a_local_checkpoint_of_any_supported_arch(tmp_path, monkeypatch, arch):
    from betaedit_plugin import BetaEditor
    from betaedit_plugin.models.tiny import build_tiny

    monkeypatch.setenv("BETAEDIT_CACHE", str(tmp_path / "cache"))
    model, tok = build_tiny(arch)
    ckpt = tmp_path / f"{arch}-checkpoint"
    model.save_pretrained(ckpt)
    tok.save_pretrained(ckpt)
    hp = BetaEditHyperParams(model_name=str(ckpt), **TINY_EDIT)
    editor = BetaEditor.from_hparams(hp)
    assert editor.layout.model_type == model.config.model_type
    metrics, _ = edit(editor, prompts=[PROMPT], target_new=[TARGET], subject=[SUBJECT])
    assert (metrics[0]["pre"]["rewrite_acc"][0], metrics[0]["post"]["rewrite_acc"][0]) == (0.0, 1.0)
