"""The benchmark runner as a library: configuration, the experiment loop, evaluation points,
checkpoints and resume, and the side-by-side comparison. ``python -m betaedit_plugin.run`` is the
command line over it (`betaedit_plugin.run`).

    from betaedit_plugin.runner import run_experiment, compare
"""

from .checkpoint import CheckpointError
from .compare import compare, screening, update_comparison
from .config import CONF_DIR, build_hparams, load_requests, run_config_class, validate_config
from .errors import ConfigError
from .evaluation import Evaluator, eval_sample
from .experiment import check_out_dir, check_run, run_experiment
from .results import RunResults

__all__ = [
    "run_experiment",
    "RunResults",
    "check_run",
    "check_out_dir",
    "compare",
    "screening",
    "update_comparison",
    "Evaluator",
    "eval_sample",
    "ConfigError",
    "CheckpointError",
    "CONF_DIR",
    "run_config_class",
    "validate_config",
    "build_hparams",
    "load_requests",
]
