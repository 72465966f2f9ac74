from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404
from django.template import engines
from django.urls import include, path

from tests.models import Article

#: A page of the project showing an article's status fragment, with htmx
#: (the browser test puts htmx.min.js among the static files).
PAGE = """{% load qsignals static %}<!doctype html>
<html><head><title>{{ article.title }}</title>
<script src="{% static 'htmx.min.js' %}"></script>
<style>
main { font: 16px system-ui, sans-serif; padding: .5em 1.5em; width: 30em; }
h1 { font-size: 1.5em; }
.qsignals-call { white-space: nowrap; }
.qsignals-calls { list-style: none; padding: 0; }
.qsignals-call span { margin-right: .6em; }
.qsignals-handler { font-family: monospace; font-weight: bold; }
.qsignals-state, .qsignals-age { color: #666; }
</style></head>
<body><main><h1>{{ article.title }}</h1>
<p>Rendering the report's pages:</p>
{% qsignals_status article %}</main></body></html>"""


def article_page(request: HttpRequest, pk: int) -> HttpResponse:
    article = get_object_or_404(Article, pk=pk)
    page = engines["django"].from_string(PAGE)
    return HttpResponse(page.render({"article": article}, request))


urlpatterns = [
    path("admin/", admin.site.urls),
    path("qsignals/", include("django_q_signals.urls")),
    path("articles/<int:pk>/", article_page),
]
