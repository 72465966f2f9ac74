"""The dotted name of each signal the listing shows: the module that
defines it, and the name it has there."""

from __future__ import annotations

import ast
import inspect
import itertools
import sys
import tokenize
from collections import defaultdict
from collections.abc import Iterable, Iterator
from types import ModuleType
from typing import Any

from django.dispatch import Signal

#: Where a signal is held: a module's name, and the attribute holding it.
_Holder = tuple[str, str]


def signal_names(signals: Iterable[Signal]) -> dict[Signal, str]:
    """A dotted name for each signal: the module that defines it, and the
    name it has there.

    A Signal does not know where it was created, so the command looks for it,
    once per run, among the module-level attributes of the modules already
    imported. Several modules may hold the same signal (a package's
    ``__init__`` re-exporting it, every module that imported it). The module
    whose own source assigns it the result of a call (``name = Signal()``,
    ``name: Signal = ModelSignal(...)``, a factory) defines it; importing it
    (``from x import name``) or aliasing it (``alias = x.name``) does not. A
    module whose source cannot be read (compiled only, built at run time) may
    be the one, so it comes next; last, any module holding it. Among equals,
    the deepest module wins (a package usually re-exports from its
    submodules), then the names in alphabetical order.
    """
    wanted = {id(signal): signal for signal in signals}
    modules = _imported_modules()
    holders = _holders(wanted, modules)
    holding = {module_name for module_name, _ in itertools.chain(*holders.values())}
    assigned = {
        module_name: _assigned_from_a_call(modules[module_name])
        for module_name in holding
    }
    return {
        signal: _name(signal, holders[signal], assigned) for signal in wanted.values()
    }


def _imported_modules() -> dict[str, ModuleType]:
    return {
        name: module
        for name, module in list(sys.modules.items())
        if isinstance(module, ModuleType)
    }


def _holders(
    wanted: dict[int, Signal], modules: dict[str, ModuleType]
) -> dict[Signal, list[_Holder]]:
    """The module-level attributes holding each wanted signal."""
    holders: dict[Signal, list[_Holder]] = defaultdict(list)
    for module_name, module in modules.items():
        # Not vars(module): reading __dict__ through the module would load a
        # module that importlib.util.LazyLoader has not loaded yet.
        namespace: dict[str, Any] = object.__getattribute__(module, "__dict__")
        for attribute, value in list(namespace.items()):
            if id(value) in wanted:
                holders[wanted[id(value)]].append((module_name, attribute))
    return holders


def _name(
    signal: Signal, held: list[_Holder], assigned: dict[str, set[str] | None]
) -> str:
    """The signal's dotted name, from the holder that most likely defines it."""
    created = [
        (module_name, attribute)
        for module_name, attribute in held
        if attribute in (assigned[module_name] or ())
    ]
    unread = [pair for pair in held if assigned[pair[0]] is None]
    candidates = created or unread or held
    if not candidates:
        return f"an unnamed signal ({signal!r})"
    module_name, attribute = min(
        candidates, key=lambda pair: (-pair[0].count("."), pair)
    )
    return f"{module_name}.{attribute}"


def _assigned_from_a_call(module: ModuleType) -> set[str] | None:
    """The names the module's own top-level code assigns a call's result;
    None if its source cannot be read."""
    tree = _source_tree(module)
    if tree is None:
        return None
    names: set[str] = set()
    for node in _module_level(tree):
        if isinstance(node, ast.Assign | ast.AnnAssign) and isinstance(
            node.value, ast.Call
        ):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(
                target.id for target in targets if isinstance(target, ast.Name)
            )
    return names


def _source_tree(module: ModuleType) -> ast.Module | None:
    """The module's source, parsed; None if it cannot be read."""
    try:
        # TypeError: no file (built in, or built at run time).
        file = inspect.getsourcefile(module)
        if file is None:  # Compiled only: bytecode, an extension module.
            return None
        with tokenize.open(file) as source:
            return ast.parse(source.read())
    except (OSError, SyntaxError, TypeError, ValueError):
        # Or a file removed or changed since the module was imported.
        return None


def _module_level(node: ast.AST) -> Iterator[ast.AST]:
    """The nodes of module-level code, ``if`` and ``try`` blocks included,
    function and class bodies left out."""
    for child in ast.iter_child_nodes(node):
        if not isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            yield child
            yield from _module_level(child)
