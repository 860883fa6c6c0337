"""The method registry: every editing method once, found by any spelling of its name.

A method file ends with one call::

    register_method(Method(name="BetaEdit", hparams_class=BetaEditHyperParams, rule_class=BetaEditRule,
                           summary="..."))

and everything that needs to know the methods reads this registry: hyperparameter loading
(``alg_name`` in a YAML), the EasyEdit adapter (the names it adds to ``ALG_DICT``), the runner
(its ``method=`` options and the order of the comparison). Names are matched without regard to
case, ``-``, ``_`` or spaces, so 'BetaEdit', 'betaedit', 'BE-AlphaEdit' and 'alphaedit' all work.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Generic, Iterator, List, Optional, Tuple, TypeVar

from .._suggest import did_you_mean
from .base import EditHyperParams, UpdateRule, _method_of_class, _spelling

__all__ = ["Method", "Registry", "METHODS", "register_method", "get_method", "method_of", "method_names"]

T = TypeVar("T")


_key = _spelling  # the spelling-free key of a name: lower case, without '-', '_' and spaces


class Registry(Generic[T]):
    """Named values, each under several names (aliases), looked up by any spelling of them.

    Args:
        what: what the values are, for error messages ("method").
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self._by_key: Dict[str, T] = {}
        self._entries: List[Tuple[Tuple[str, ...], T]] = []

    def register(self, names: Tuple[str, ...], value: T) -> T:
        """Add ``value`` under ``names`` (the first is its display name).

        Raises:
            ValueError: no name, or a name that is empty.
            KeyError: a name (in any spelling) is taken already.
        """
        names = tuple(dict.fromkeys(str(n) for n in names))
        if not names or any(not _key(n) for n in names):
            raise ValueError(f"{self.what} names={names!r}: expected at least one non-empty name")
        for n in names:
            if _key(n) in self._by_key:
                owner = self._display(self._by_key[_key(n)])
                raise KeyError(f"There is already a {self.what} called {n!r} ({owner!r}); choose another name")
        for n in names:
            self._by_key[_key(n)] = value
        self._entries.append((names, value))
        return value

    def get(self, name: object) -> T:
        """The value registered under any spelling of ``name``.

        Raises:
            KeyError: unknown name: "Unknown <what> 'x'. Did you mean 'y'? Available: a, b".
        """
        value = self._by_key.get(_key(name))
        if value is None:
            raise KeyError(f"Unknown {self.what} {name!r}." + did_you_mean(name, self.names()))
        return value

    def __contains__(self, name: object) -> bool:
        return _key(name) in self._by_key

    def __iter__(self) -> Iterator[T]:
        """Values in registration order."""
        return iter([v for _, v in self._entries])

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> List[str]:
        """Display names in registration order."""
        return [names[0] for names, _ in self._entries]

    def all_names(self) -> List[str]:
        """Every registered name (aliases included), in registration order."""
        return [n for names, _ in self._entries for n in names]

    def _display(self, value: T) -> str:
        return next(names[0] for names, v in self._entries if v is value)


@dataclass(frozen=True)
class Method:
    """One editing method: its hyperparameters, its update rule and its names.

    Args:
        name: the paper's spelling; ``alg_name`` in its YAMLs and their folder ``hparams/<name>/``.
        hparams_class: its hyperparameter dataclass (a subclass of `EditHyperParams`).
        rule_class: its `UpdateRule` subclass, built once per editor as ``rule_class(hparams)``.
        easyedit_name: its key in EasyEdit's ``ALG_DICT`` and the ``alg_name`` a loaded object
            carries; differs from ``name`` where EasyEdit has a method of that name itself
            ('BE-AlphaEdit'), so that EasyEdit dispatches here. Default: ``name``.
        cli_name: the runner's ``method=`` option. Default: ``name`` in lower case.
        aliases: further accepted spellings.
        summary: one line for listings and the runner's help.
    """

    name: str
    hparams_class: type
    rule_class: type
    easyedit_name: Optional[str] = None
    cli_name: Optional[str] = None
    aliases: Tuple[str, ...] = ()
    summary: str = ""
    names: Tuple[str, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "easyedit_name", self.easyedit_name or self.name)
        object.__setattr__(self, "cli_name", self.cli_name or self.name.lower())
        names = (self.name, self.easyedit_name, self.cli_name, *self.aliases)
        object.__setattr__(self, "names", tuple(dict.fromkeys(names)))

    def rule(self, hparams):
        """The update rule of this method for ``hparams``."""
        return self.rule_class(hparams)


#: The registry of this package's methods (filled by the method modules in `betaedit_plugin.methods`).
METHODS: Registry[Method] = Registry("method")


def register_method(method: Method) -> Method:
    """Add a method to `METHODS` under all its names; KeyError if a name is taken.

    Raises:
        TypeError: ``method`` is not a `Method`, or its classes are not an `EditHyperParams` /
            `UpdateRule` subclass.
    """
    if not isinstance(method, Method):
        raise TypeError(f"register_method: expected a Method, got {type(method).__name__}")
    if not (isinstance(method.hparams_class, type) and issubclass(method.hparams_class, EditHyperParams)):
        raise TypeError(f"Method {method.name!r}: hparams_class must subclass EditHyperParams")
    if not (isinstance(method.rule_class, type) and issubclass(method.rule_class, UpdateRule)):
        raise TypeError(f"Method {method.name!r}: rule_class must subclass UpdateRule")
    if "_method" in method.hparams_class.__dict__:
        raise KeyError(f"{method.hparams_class.__name__} already belongs to a registered method; one class per method")
    METHODS.register(method.names, method)
    method.hparams_class._method = method
    return method


def get_method(name: object) -> Method:
    """The method called ``name`` in any spelling ('BetaEdit', 'betaedit', 'BE-AlphaEdit', 'memit'...).

    Raises:
        KeyError: unknown name, with "Did you mean" and the available methods.
    """
    _load_builtin()
    return METHODS.get(name)


def method_of(hparams_or_class) -> Method:
    """The method a hyperparameter object or class belongs to (through its class hierarchy).

    Raises:
        TypeError: no registered method owns this class.
    """
    _load_builtin()
    cls = hparams_or_class if isinstance(hparams_or_class, type) else type(hparams_or_class)
    return _method_of_class(cls)


def method_names() -> List[str]:
    """Paper names of the registered methods, in registration order."""
    _load_builtin()
    return METHODS.names()


def _load_builtin() -> None:
    """Import the method modules shipped with the package (each registers itself once)."""
    import importlib

    importlib.import_module(__package__)
