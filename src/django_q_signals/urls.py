"""The status fragment's view, for your URLs:
``path("qsignals/", include("django_q_signals.urls"))``."""

from django.urls import path

from django_q_signals import views

app_name = "django_q_signals"
urlpatterns = [path("<str:label>/<str:pk>/", views.status, name="status")]
