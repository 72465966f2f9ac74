from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render

from shop.models import Report


def report(request: HttpRequest, pk: int) -> HttpResponse:
    """A report's page: its status fragment shows render_report's progress."""
    return render(
        request, "shop/report.html", {"report": get_object_or_404(Report, pk=pk)}
    )
