"""Run a Python module or code with every deprecation notice recorded and traced to its caller.

    python tests/support/deprecations.py REPORT.json -m MODULE [ARGS...]
    python tests/support/deprecations.py REPORT.json -c CODE

Shows every ``DeprecationWarning``, ``PendingDeprecationWarning`` and ``FutureWarning`` (as
``-W always`` would) and every message with "deprecat" that a library logs (transformers logs
its cache-argument notices instead of warning). At exit it writes REPORT.json:
``{"package": [...], "other": [...]}``, one ``"<issuer>: <category>: <message> (<package frame>)"``
line per notice.

A notice counts as the package's (``"package"``) when the package called the issuing library
directly: walking out from the line that warned, the frames until the innermost ``betaedit_plugin``
frame all belong to the issuing library (or to call machinery: torch's ``Module.__call__``,
importlib, functools, contextlib). A notice that a third library's own call raised on the way
(matplotlib calling pyparsing, say) lands in ``"other"``: the package cannot fix it by changing
its calls.
"""

from __future__ import annotations

import atexit
import json
import logging
import runpy
import sys
import warnings
from pathlib import Path

PACKAGE = "betaedit_plugin"
CATEGORIES = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)
PASS_THROUGH = {"torch", "importlib", "functools", "contextlib", "_frozen_importlib", "_frozen_importlib_external",
                "warnings", "logging", "typing"}
_report: dict = {"package": [], "other": []}


def _top(frame) -> str:
    return str(frame.f_globals.get("__name__", "")).split(".")[0]


def _classify(frame, issuer: str, text: str) -> None:
    """Walk out from ``frame`` (where the notice was raised) and file ``text``."""
    chain = []
    while frame is not None and _top(frame) != PACKAGE:
        chain.append(_top(frame))
        frame = frame.f_back
    if frame is None:
        _report["other"].append(f"{issuer}: {text} (no {PACKAGE} frame)")
        return
    where = f"{frame.f_code.co_filename}:{frame.f_lineno}"
    foreign = sorted({t for t in chain if t not in PASS_THROUGH and t != issuer})
    if foreign:
        _report["other"].append(f"{issuer}: {text} (from {PACKAGE} via {', '.join(foreign)}: {where})")
    else:
        _report["package"].append(f"{issuer}: {text} ({where})")


_show = warnings.showwarning


def _showwarning(message, category, filename, lineno, file=None, line=None):
    if issubclass(category, CATEGORIES):
        frame = sys._getframe(1)
        while frame is not None and _top(frame) == "warnings":
            frame = frame.f_back
        issuer = _top(frame) if frame is not None else "?"
        _classify(frame, issuer, f"{category.__name__}: {message}")
    _show(message, category, filename, lineno, file, line)


class _LoggedNotices(logging.Handler):
    def emit(self, record):
        text = record.getMessage()
        if "deprecat" in text.lower():
            frame = sys._getframe(1)
            while frame is not None and _top(frame) == "logging":
                frame = frame.f_back
            _classify(frame, record.name.split(".")[0], f"logged: {text}")


def main(argv: list) -> None:
    if len(argv) < 3 or argv[1] not in ("-m", "-c"):
        sys.exit(__doc__)
    report = Path(argv[0])
    atexit.register(lambda: report.write_text(json.dumps(_report, indent=1)))
    for category in CATEGORIES:
        warnings.simplefilter("always", category)
    warnings.showwarning = _showwarning
    handler = _LoggedNotices(logging.DEBUG)
    for name in ("transformers", "hydra", "accelerate", "huggingface_hub"):
        logging.getLogger(name).addHandler(handler)
    if argv[1] == "-m":
        sys.argv = [argv[2], *argv[3:]]
        runpy.run_module(argv[2], run_name="__main__", alter_sys=True)
    else:
        sys.argv = ["-c", *argv[3:]]
        exec(compile(argv[2], "<string>", "exec"), {"__name__": "__main__"})


if __name__ == "__main__":
    sys.path.pop(0)  # this file's directory, which `python FILE` puts first
    main(sys.argv[1:])
