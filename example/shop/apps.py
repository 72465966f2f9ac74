from django.apps import AppConfig


class ShopConfig(AppConfig):
    name = "shop"

    def ready(self) -> None:
        # Connects the @async_receiver handlers, in the web process and in
        # every worker (which finds a handler by its module and name).
        from shop import handlers  # noqa: F401
