from django.urls import include, path
from shop import views

urlpatterns = [
    path("reports/<int:pk>/", views.report, name="report"),
    # The status fragment's view, which the fragment polls.
    path("qsignals/", include("django_q_signals.urls")),
]
