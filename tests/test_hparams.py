"""Every shipped hparams YAML loads; bad settings fail with errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from betaedit_plugin import AlphaEditHyperParams, BetaEditHyperParams, MEMITHyperParams, load_hparams
from betaedit_plugin.methods import METHODS

ROOT = Path(__file__).resolve().parents[1]
YAMLS = sorted((ROOT / "hparams").glob("*/*.yaml"))
CLASS_BY_DIR = {m.name: m.hparams_class for m in METHODS}  # hparams/<method name>/ for every registered method
# number of layers of each paper model: v_loss_layer must be the last one
N_LAYERS = {"gpt2-xl": 48, "gpt-j-6b": 28, "llama3-8b-instruct": 32, "qwen3-4b-instruct-2507": 36, "smollm2-135m": 30}
PAPER_LAYERS = {
    "gpt2-xl": [13, 14, 15, 16, 17],
    "gpt-j-6b": [3, 4, 5, 6, 7, 8],
    "llama3-8b-instruct": [4, 5, 6, 7, 8],
    "qwen3-4b-instruct-2507": [4, 5, 6, 7, 8],
}


def test_all_paper_yamls_exist():
    names = {(p.parent.name, p.stem) for p in YAMLS}
    for alg in CLASS_BY_DIR:
        for model in PAPER_LAYERS:
            assert (alg, model) in names, f"missing hparams/{alg}/{model}.yaml"


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_yaml_loads_with_the_right_class(path):
    hp = load_hparams(path)
    assert type(hp) is CLASS_BY_DIR[path.parent.name]
    assert type(CLASS_BY_DIR[path.parent.name].from_hparams(path)) is type(hp)
    assert hp.v_loss_layer == N_LAYERS[path.stem] - 1
    if path.stem in PAPER_LAYERS:
        assert hp.layers == PAPER_LAYERS[path.stem]
        if isinstance(hp, BetaEditHyperParams):
            assert (hp.lambda1, hp.lambda2, hp.tau, hp.nullspace_threshold) == (3000.0, 10.0, 1000, 0.02)
        if isinstance(hp, AlphaEditHyperParams):
            assert (hp.L2, hp.nullspace_threshold) == (10.0, 0.02)
    # round trip through a plain dict keeps every field
    assert type(hp).from_dict(hp.to_dict()).to_dict() == hp.to_dict()


def _beta(**over):
    base = dict(alg_name="BetaEdit", layers=[1, 2])
    base.update(over)
    return BetaEditHyperParams.from_dict(base)


@pytest.mark.parametrize(
    "override, field",
    [
        ({"layers": []}, "layers"),
        ({"layers": [2, 1]}, "layers"),
        ({"layers": [1, 1]}, "layers"),
        ({"lambda1": -1.0}, "lambda1"),
        ({"lambda2": -0.5}, "lambda2"),
        ({"nullspace_threshold": -0.02}, "nullspace_threshold"),
        ({"nullspace_threshold": 0.0}, "nullspace_threshold"),
        ({"tau": 0}, "tau"),
        ({"tau": 2.5}, "tau"),
        ({"v_loss_layer": 0}, "v_loss_layer"),
        ({"lamda1": 3.0}, "lamda1"),
    ],
)
def test_bad_hparams_name_the_field(override, field):
    with pytest.raises(ValueError, match=field):
        _beta(**override)


def test_unknown_alg_name_suggests():
    with pytest.raises(ValueError, match="alg_name"):
        _beta(alg_name="BetaEdt")


def test_load_hparams_unknown_alg_name_did_you_mean(tmp_path):
    p = tmp_path / "x.yaml"
    p.write_text(yaml.safe_dump({"alg_name": "BetaEdt", "layers": [1]}))
    with pytest.raises(KeyError, match="Did you mean 'BetaEdit'"):
        load_hparams(p)


def test_negative_alphaedit_l2_and_memit_weight():
    with pytest.raises(ValueError, match="L2"):
        AlphaEditHyperParams.from_dict({"alg_name": "AlphaEdit", "layers": [1], "L2": -1})
    with pytest.raises(ValueError, match="mom2_update_weight"):
        MEMITHyperParams.from_dict({"alg_name": "MEMIT", "layers": [1, 2], "mom2_update_weight": [1.0]})


@pytest.mark.parametrize("weight", [0, 0.0, [5.0, 0.0]])
def test_memit_weight_zero_is_refused_naming_its_field(weight):
    from betaedit_plugin import BetaEditError, HyperParamsError

    with pytest.raises(HyperParamsError, match=r"^mom2_update_weight=.*: MEMIT needs w > 0 .* use e.g. 15000") as info:
        MEMITHyperParams.from_dict({"alg_name": "MEMIT", "layers": [1, 2], "mom2_update_weight": weight})
    assert "lambda" not in str(info.value) and isinstance(info.value, BetaEditError)
    # the other methods do not use the weight: 0 is fine there
    assert BetaEditHyperParams(layers=[1, 2], mom2_update_weight=weight).mom2_update_weight in (0.0, [5.0, 0.0])


@pytest.mark.parametrize("cls, fields, named", [
    (AlphaEditHyperParams, {"L2": 0}, r"^L2=0: AlphaEdit needs L2 > 0"),
    (BetaEditHyperParams, {"lambda1": 0, "lambda2": 0.0}, r"^lambda1=0 and lambda2=0: BetaEdit needs one of them > 0"),
])
def test_ridge_terms_that_leave_the_first_solve_singular_are_refused(cls, fields, named):
    from betaedit_plugin import HyperParamsError

    with pytest.raises(HyperParamsError, match=named):
        cls(layers=[1, 2], **fields)
    # one of BetaEdit's two terms is enough
    assert BetaEditHyperParams(layers=[1, 2], lambda1=0.0, lambda2=1.0).lambda1 == 0.0
    assert BetaEditHyperParams(layers=[1, 2], lambda1=5.0, lambda2=0.0).lambda2 == 0.0


def test_mom2_adjustment_is_only_accepted_as_true():
    assert _beta(mom2_adjustment=True).mom2_adjustment is True
    with pytest.raises(ValueError, match="mom2_adjustment=False: .* always use the key second moment C0"):
        _beta(mom2_adjustment=False)
