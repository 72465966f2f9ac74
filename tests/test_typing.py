"""Type information: checked by mypy in ``nox -s types``, and at run time."""

from __future__ import annotations

from importlib.resources import files
from typing import TYPE_CHECKING, Any

from django_q_signals import async_receiver
from tests.conftest import custom


def test_the_decorator_keeps_the_handlers_type() -> None:
    def handler(sender: Any, n: int, **kwargs: Any) -> str:
        return str(n)

    decorated = async_receiver(custom)(handler)
    try:
        assert decorated(sender=None, n=1) == "1"
        if TYPE_CHECKING:
            # mypy knows the signature: a wrong argument type is an error, so
            # this ignore is used (mypy --strict rejects unused ignores).
            decorated(sender=None, n="one")  # type: ignore[arg-type]
            length: int = decorated(sender=None, n=1)  # type: ignore[assignment]
            assert length
    finally:
        custom.disconnect(handler)


def test_a_misspelt_option_is_a_type_error_too() -> None:
    if TYPE_CHECKING:
        # Refused at run time with a guess; mypy flags it first (the ignore
        # is used, or mypy --strict reports it).
        async_receiver(custom, retry=3)  # type: ignore[arg-type]


def test_the_package_says_it_is_typed() -> None:
    assert files("django_q_signals").joinpath("py.typed").is_file()
