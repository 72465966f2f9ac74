"""A model of the tests in the admin: the outbox admin links its calls' rows
to their change pages."""

from django.contrib import admin

from tests.models import Article

admin.site.register(Article)
