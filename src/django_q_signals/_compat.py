"""0.x's task functions: ``<handler>_task`` on each handler's module.

django-q-signals 0.x queued each signal as a task whose function was a
``<handler>_task`` it wrote on the handler's module, called with
``(sender_label, instance_label, instance_pk, kwargs)``. The functions
written here take the same arguments and run the handler through the
worker's own call path, so a task that 0.x queued before an upgrade runs
after it, and code that calls them keeps working. The tasks of this version
never use them.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from django_q_signals._payload import Arguments, ModelClass, Row
from django_q_signals._registry import Receiver

if TYPE_CHECKING:
    from collections.abc import Callable

# Marks a module attribute as one of these functions, and names its receiver.
_RECEIVER = "_django_q_signals_receiver"


def task_function_name(receiver: Receiver) -> str:
    return f"{receiver.func.__name__}_task"


def owner(value: Any) -> Receiver | None:
    """The receiver ``value`` is the task function of, if it is one."""
    # Checked: a mock answers every attribute.
    found = getattr(value, _RECEIVER, None)
    return found if isinstance(found, Receiver) else None


def user_attribute(receiver: Receiver) -> bool:
    """Whether the receiver's module has an attribute of its task function's
    name that is not a task function of ours (then none is written)."""
    module = sys.modules.get(receiver.module)
    if module is None:
        return False
    name = task_function_name(receiver)
    return name in vars(module) and owner(vars(module)[name]) is None


def write_task_function(receiver: Receiver) -> None:
    """Write the receiver's task function on its module, unless the name is
    taken by the user, by the same handler (decorated again), or by a
    module-level handler where this one is defined inside a function."""
    module = sys.modules.get(receiver.module)
    if module is None:
        return
    name = task_function_name(receiver)
    if name in vars(module):
        current = owner(vars(module)[name])
        if current is None or current.func is receiver.func:
            return
        if receiver.is_nested and not current.is_nested:
            return
    setattr(module, name, _task_function(receiver, name))


def _task_function(receiver: Receiver, name: str) -> Callable[..., Any]:
    def task(
        sender_label: str | None,
        instance_label: str | None,
        instance_pk: Any,
        kwargs: dict[str, Any],
    ) -> Any:
        # Only where a task runs: request processes never load the worker.
        from django_q_signals import worker

        arguments = _arguments(sender_label, instance_label, instance_pk, kwargs)
        return worker.run_arguments(receiver, arguments)

    # Found by pydoc.locate and pickled by reference as <module>.<name>.
    task.__name__ = task.__qualname__ = name
    task.__module__ = receiver.module
    task.__doc__ = f"Run {receiver.name} for a task queued by django-q-signals 0.x."
    setattr(task, _RECEIVER, receiver)
    return task


def _arguments(
    sender_label: str | None,
    instance_label: str | None,
    instance_pk: Any,
    kwargs: dict[str, Any],
) -> Arguments:
    """The call 0.x recorded: model labels, the instance's pk, and the kwargs
    it could serialize (``update_fields`` as a list)."""
    kwargs = dict(kwargs)
    if isinstance(kwargs.get("update_fields"), list):
        kwargs["update_fields"] = frozenset(kwargs["update_fields"])
    sender = ModelClass(sender_label) if sender_label else None
    # Loaded as the worker loads rows: None and _instance_pk when it is gone.
    instance = Row(instance_label, instance_pk, None) if instance_label else None
    return Arguments(0, sender, {"instance": instance, **kwargs})
