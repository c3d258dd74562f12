"""The user's own API tokens: create one (shown once), see when each was used, revoke."""

from django import forms
from django.contrib import messages
from django.shortcuts import get_object_or_404, redirect, render
from django.views import View

from ..models import ApiToken


class ApiTokenForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="What will use it, e.g. “weekly report script”.")


class ApiTokenView(View):
    """GET lists the user's tokens; POST creates one and shows it, once."""

    template_name = "fleet/api_tokens.html"

    def render(self, request, form, new_key=None, status=200):
        tokens = ApiToken.objects.filter(user=request.user)
        return render(request, self.template_name, {"form": form, "tokens": tokens, "new_key": new_key}, status=status)

    def get(self, request):
        return self.render(request, ApiTokenForm())

    def post(self, request):
        form = ApiTokenForm(request.POST)
        if not form.is_valid():
            return self.render(request, form, status=400)
        _, key = ApiToken.issue(request.user, form.cleaned_data["name"])
        return self.render(request, ApiTokenForm(), new_key=key)


class ApiTokenRevokeView(View):
    def post(self, request, pk):
        token = get_object_or_404(ApiToken, pk=pk, user=request.user)  # someone else's token is a 404
        token.revoke()
        messages.success(request, f"Token “{token.name}” revoked.")
        return redirect("fleet:api_tokens")
