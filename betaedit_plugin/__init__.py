"""BetaEdit, AlphaEdit and MEMIT as stateful sequential editors, with an EasyEdit plugin.

Importing this package is cheap and has no side effects beyond its own method registry: it
imports neither torch nor transformers nor EasyEdit; the editor and the models load on first use.
"""

from .errors import BetaEditError, DeviceError, HyperParamsError, RequestError
from .hparams import AlphaEditHyperParams, BetaEditHyperParams, MEMITHyperParams, load_hparams
from .hparams_files import available_hparams, hparams_path
from .methods import get_method, method_names
from .requests import EditRequest

__all__ = [
    "BetaEditHyperParams",
    "AlphaEditHyperParams",
    "MEMITHyperParams",
    "load_hparams",
    "get_method",
    "method_names",
    "hparams_path",
    "available_hparams",
    "EditRequest",
    "BetaEditError",
    "HyperParamsError",
    "RequestError",
    "DeviceError",
    "BetaEditor",
    "register_easyedit",
    "edit",
]

__version__ = "0.1.0"


def __getattr__(name):  # lazy exports (PEP 562)
    if name == "BetaEditor":
        from .editor import BetaEditor

        return BetaEditor
    if name == "edit":  # EasyEdit's BaseEditor.edit shape for a BetaEditor: edit(editor, prompts=..., ...)
        from .adapters.front import edit

        return edit
    if name == "register_easyedit":
        from .adapters.easyedit import register_easyedit

        return register_easyedit
    raise AttributeError(f"module 'betaedit_plugin' has no attribute {name!r}")
