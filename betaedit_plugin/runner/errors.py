"""`ConfigError`: a user error in a run's configuration, with the key it is about as a field.

The message is built from the fields, not the other way round: ``field``, ``value``, ``problem``
and ``fix`` give ``"<field>=<value!r>: <problem>; <fix>"``. Code that wraps a lower error keeps
its fields (`ConfigError.about`), so no caller re-labels a message by its text.
"""

from __future__ import annotations

from typing import Any, Optional

from ..errors import BetaEditError

__all__ = ["ConfigError", "UNSET"]


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


#: ``value`` of a ConfigError that names a key without a value (or names no key)
UNSET: Any = _Unset()


class ConfigError(BetaEditError):
    """A user error in the run configuration.

    Attributes:
        field: the dotted config key (``"num_edits"``, ``"hparams.tau"``, ``"out_dir"``), or None when
            the error is about no single key (a file, a journal of another run).
        value: the value of ``field`` (`UNSET` when not shown).
        problem: what is wrong with it.
        fix: what to do (may be None when ``problem`` already says it).

    ``ConfigError("a whole message")`` still works: ``problem`` is then the message.
    """

    def __init__(self, problem: str = "", *, field: Optional[str] = None, value: Any = UNSET,
                 fix: Optional[str] = None, sep: str = ": ") -> None:
        self.field, self.value, self.problem, self.fix, self.sep = field, value, problem, fix, sep
        super().__init__(self.format())

    def format(self) -> str:
        """``<field>=<value!r><sep><problem>; <fix>`` with the parts that are set."""
        head = "" if self.field is None else (self.field if self.value is UNSET else f"{self.field}={self.value!r}")
        message = f"{head}{self.sep}{self.problem}" if head and self.problem else head or self.problem
        return f"{message}; {self.fix}" if self.fix else message

    @classmethod
    def about(cls, field: str, value: Any, exc: BaseException, fix: Optional[str] = None) -> "ConfigError":
        """A ConfigError on ``field=value`` whose problem is ``exc``'s message (a lower layer's error)."""
        return cls(str(exc), field=field, value=value, fix=fix)

    @classmethod
    def naming(cls, field: str, exc: BaseException) -> "ConfigError":
        """A lower layer's error whose one-line message already names ``field`` and its value
        (``hparams.device='gpu': not a torch device ...``): kept as it is, with ``field`` set."""
        return cls._verbatim(field, str(exc))

    @classmethod
    def inside(cls, group: str, exc: BaseException, suffix: str = "") -> "ConfigError":
        """A lower layer's error whose message names a key of ``group`` relative to it (a
        hyperparameters error: ``tau=0: ...``): the message names it in full (``hparams.tau=0: ...``),
        ``field`` is the group."""
        return cls._verbatim(group, f"{group}.{exc}{suffix}")

    @classmethod
    def _verbatim(cls, field: str, message: str) -> "ConfigError":
        err = cls(message)
        err.field = field
        return err
