"""Make the running environment import EasyEdit on its own: ``python tests/easyedit/install_into_env.py SRC``.

    .venv-easyedit/bin/python tests/easyedit/install_into_env.py "$(cat build/easyedit/easyedit-path)"

Writes two ``.pth`` files into the environment's site-packages (`make easyedit-install` runs this
on every call, so a changed EASYEDIT_SRC takes effect):

- ``easyedit-source.pth``: SRC, the directory that holds ``easyeditor/``, as a path entry. This
  is what ``pip install -e SRC --no-deps`` leaves behind; the vendored archive has no setup.py to
  install it with.
- ``easyedit-cpu-stubs.pth``: loads ``easyedit_stubs`` from this directory and calls
  `easyedit_stubs.install_on_easyeditor_import`, so the torchvision/timm import stubs are in place
  when a script imports easyeditor (only where torchvision is not installed). Start-up cost: one
  small module, no import of torch or transformers.

Then ``.venv-easyedit/bin/python examples/easyedit_benchmark.py ...`` runs as README shows it, with
no PYTHONPATH and no wrapper.
"""

from __future__ import annotations

import sys
import sysconfig
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list) -> int:
    if len(argv) != 1:
        sys.exit(__doc__)
    source = Path(argv[0]).resolve()
    if not (source / "easyeditor" / "__init__.py").is_file():
        sys.exit(f"{source} holds no easyeditor/__init__.py; run `make easyedit-source` (tests/easyedit/easyedit_source.py)")
    site = Path(sysconfig.get_paths()["purelib"])
    (site / "easyedit-source.pth").write_text(f"{source}\n")
    stubs = HERE / "easyedit_stubs.py"
    (site / "easyedit-cpu-stubs.pth").write_text(
        "import importlib.util, sys; "
        f"_s = importlib.util.spec_from_file_location('easyedit_stubs', {str(stubs)!r}); "
        "_m = sys.modules.setdefault('easyedit_stubs', importlib.util.module_from_spec(_s)); "
        "_s.loader.exec_module(_m) if not hasattr(_m, 'install') else None; "
        "_m.install_on_easyeditor_import()\n"
    )
    print(f"EasyEdit source {source} and the CPU import stubs installed into {site}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
