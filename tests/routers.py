from typing import Any

from django.db.models import Model

#: Models whose rows live in the "other" database.
OTHER_MODELS = {"tests.ledger"}


class Router:
    def _route(self, model: type[Model]) -> str | None:
        return "other" if model._meta.label_lower in OTHER_MODELS else None

    def db_for_read(self, model: type[Model], **hints: Any) -> str | None:
        return self._route(model)

    def db_for_write(self, model: type[Model], **hints: Any) -> str | None:
        return self._route(model)
