"""The package's promises about importing it."""

from __future__ import annotations

import json
import subprocess
import sys


def test_import_is_light_and_imports_no_easyedit():
    code = (
        "import json, sys; import betaedit_plugin as b; b.BetaEditHyperParams; b.load_hparams; b.get_method('memit');"
        "print(json.dumps(sorted(m for m in ('torch', 'transformers', 'easyeditor', 'hydra', 'omegaconf', 'numpy',"
        " 'matplotlib', 'safetensors') if m in sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_public_names_of_the_design():
    import betaedit_plugin
    from betaedit_plugin import AlphaEditHyperParams, BetaEditHyperParams, MEMITHyperParams, register_easyedit  # noqa: F401
    from betaedit_plugin.linalg import (  # noqa: F401
        alphaedit_delta,
        betaedit_delta,
        memit_delta,
        nullspace_projector,
        protected_cov,
    )

    assert callable(betaedit_plugin.BetaEditor.from_hparams)
