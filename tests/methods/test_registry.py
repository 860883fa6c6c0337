"""The method registry: any spelling finds a method, duplicates are refused, misses say "Did you mean"."""

from __future__ import annotations

import dataclasses

import pytest

from betaedit_plugin.methods import (
    METHODS,
    AlphaEditHyperParams,
    BetaEditHyperParams,
    EditHyperParams,
    MEMITHyperParams,
    Method,
    Registry,
    UpdateRule,
    get_method,
    method_names,
    method_of,
    register_method,
)


@pytest.mark.parametrize(
    "spelling, name",
    [("BetaEdit", "BetaEdit"), ("betaedit", "BetaEdit"), ("BE-AlphaEdit", "AlphaEdit"), ("alphaedit", "AlphaEdit"),
     ("AlphaEdit", "AlphaEdit"), ("MEMIT", "MEMIT"), ("be_memit", "MEMIT"), (" Memit ", "MEMIT")],
)
def test_any_spelling_finds_the_method(spelling, name):
    assert get_method(spelling).name == name


def test_the_shipped_methods_in_comparison_order():
    names = method_names()
    assert names.index("MEMIT") < names.index("AlphaEdit") < names.index("BetaEdit")
    by_class = {m.hparams_class: m.easyedit_name for m in METHODS}
    assert by_class[BetaEditHyperParams] == "BetaEdit"
    assert by_class[AlphaEditHyperParams] == "BE-AlphaEdit"
    assert by_class[MEMITHyperParams] == "BE-MEMIT"


def test_unknown_name_did_you_mean_and_available():
    with pytest.raises(KeyError, match=r"Unknown method 'betaedt'\. Did you mean 'BetaEdit'\? Available: MEMIT, "):
        get_method("betaedt")


def test_duplicate_names_are_refused_in_any_spelling():
    reg = Registry("thing")
    reg.register(("Foo", "foo-bar"), 1)
    with pytest.raises(KeyError, match="There is already a thing called 'FOO_BAR'"):
        reg.register(("Baz", "FOO_BAR"), 2)
    assert reg.names() == ["Foo"] and reg.get("foobar") == 1 and "baz" not in reg
    with pytest.raises(KeyError, match="There is already a method called 'betaedit'"):
        register_method(Method(name="betaedit", hparams_class=_OtherHP, rule_class=UpdateRule))


@dataclasses.dataclass
class _OtherHP(EditHyperParams):
    pass


def test_registration_checks_its_classes():
    with pytest.raises(TypeError, match="hparams_class must subclass EditHyperParams"):
        register_method(Method(name="Nope", hparams_class=dict, rule_class=UpdateRule))
    with pytest.raises(TypeError, match="rule_class must subclass UpdateRule"):
        register_method(Method(name="Nope", hparams_class=_OtherHP, rule_class=object))
    with pytest.raises(KeyError, match="already belongs"):
        register_method(Method(name="Nope", hparams_class=BetaEditHyperParams, rule_class=UpdateRule))
    assert "Nope" not in METHODS


def test_hparams_of_an_unregistered_class_are_refused():
    with pytest.raises(TypeError, match="_OtherHP belongs to no registered method"):
        _OtherHP(layers=[1])
    with pytest.raises(TypeError):
        method_of(_OtherHP)


def test_alg_name_in_any_spelling_is_stored_as_the_easyedit_name():
    assert BetaEditHyperParams(layers=[1], alg_name="betaedit").alg_name == "BetaEdit"
    assert AlphaEditHyperParams(layers=[1], alg_name="alphaedit").alg_name == "BE-AlphaEdit"
    assert MEMITHyperParams(layers=[1]).alg_name == "BE-MEMIT"
    with pytest.raises(ValueError, match="alg_name=.AlphaEdit. is not BetaEdit.*BetaEditHyperParams takes"):
        BetaEditHyperParams(layers=[1], alg_name="AlphaEdit")


def test_rules_give_the_solver_settings_of_each_method():
    import torch

    c0 = torch.diag(torch.tensor([1e-3, 1e-3, 1.0, 2.0], dtype=torch.float64))
    memit = get_method("memit").rule(MEMITHyperParams(layers=[1, 2], mom2_update_weight=[3.0, 4.0]))
    assert memit.solver_lambdas(2) == (4.0, 0.0) and memit.initial_basis(c0) is None
    alpha = get_method("alphaedit").rule(AlphaEditHyperParams(layers=[1], L2=5.0))
    assert alpha.solver_lambdas(1) == (0.0, 5.0) and alpha.initial_basis(c0).shape == (4, 2)
    beta = get_method("betaedit").rule(BetaEditHyperParams(layers=[1], lambda1=7.0, lambda2=2.0))
    assert beta.solver_lambdas(1) == (7.0, 2.0) and beta.uses_history
