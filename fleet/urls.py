"""URLs of the dashboard (namespace ``fleet``)."""

app_name = "fleet"
urlpatterns = []
