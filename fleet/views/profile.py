"""The user's profile page: the time zone every date is shown in (fleet.profile)."""

import zoneinfo

from django import forms
from django.contrib import messages
from django.shortcuts import render
from django.views import View

from .. import profile


def timezone_choices():
    return [(name, name) for name in sorted(zoneinfo.available_timezones())]


class ProfileForm(forms.Form):
    timezone = forms.ChoiceField(
        choices=timezone_choices, label="Time zone",
        help_text="Every date on imdsweb is shown in this zone, with its name (UTC by default).",
    )


class ProfileView(View):
    template_name = "fleet/profile.html"

    def get(self, request):
        return render(request, self.template_name,
                      {"form": ProfileForm(initial={"timezone": profile.timezone_of(request.user)})})

    def post(self, request):
        form = ProfileForm(request.POST)
        if not form.is_valid():
            return render(request, self.template_name, {"form": form}, status=400)
        profile.set_timezone(request, form.cleaned_data["timezone"])
        messages.success(request, f"Dates are now shown in {form.cleaned_data['timezone']}.")
        return render(request, self.template_name, {"form": form})
