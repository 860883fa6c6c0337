"""Run a Python script with the torchvision/timm import stubs installed (CPU-only machines).

    python tests/easyedit/with_stubs.py SCRIPT [ARGS...]

``import easyeditor`` imports its multimodal code, which needs torchvision and timm; on a machine
where those cannot be installed (here: torch 2.13.0 CPU), this installs the stubs of
`easyedit_stubs` and then runs SCRIPT as ``__main__`` with ARGS. Where torchvision is installed,
run the script directly instead.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import easyedit_stubs

    easyedit_stubs.install()
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    sys.path[0] = str(Path(script).resolve().parent)  # as `python SCRIPT` would set it
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
