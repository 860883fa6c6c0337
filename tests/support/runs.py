"""The runner's command line for the runner tests: a subprocess of this checkout, and its one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Optional, Sequence

REPO = Path(__file__).resolve().parents[2]


def repo_env(**extra: str) -> dict:
    """The environment of a subprocess that imports this checkout (one thread, Hydra's short errors)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HYDRA_FULL_ERROR="0", **extra)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def cli(args: Sequence[str], cwd: Path, env: Optional[dict] = None, prefix: Sequence[str] = ()) -> subprocess.CompletedProcess:
    """``python -m betaedit_plugin.run ARGS`` (``prefix``: a command to run it under, e.g. setpriv)."""
    return subprocess.run([*prefix, sys.executable, "-m", "betaedit_plugin.run", *args], cwd=cwd,
                          env=env or repo_env(), capture_output=True, text=True, timeout=600)


def assert_one_line_exit_2(err: str, code, *needles: str) -> None:
    """A user error as the command line reports it: exit 2, one line, no traceback, naming ``needles``."""
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("betaedit-run: error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


def write_cases(path: Path, edit: Optional[dict] = None, json_lines: bool = False) -> Path:
    """The first three bundled CounterFact cases as a data file (JSON, or JSON Lines), with
    ``edit`` = {index: {field: value}} applied."""
    import json

    from betaedit_plugin.data import read_json_records, resource_path

    records = read_json_records(resource_path("counterfact/counterfact-edit.json.gz"))[:3]
    for i, fields in (edit or {}).items():
        records[i].update(fields)
    text = "".join(json.dumps(r) + "\n" for r in records) if json_lines else json.dumps(records)
    path.write_text(text, encoding="utf-8")
    return path


def results_script(name: str):
    """A fresh import of ``results/<name>.py`` (the campaign's scripts are files, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "results" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
