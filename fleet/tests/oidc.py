"""A real OpenID Connect provider in its own process for the single sign-on tests (panva's
oidc-provider run by ``tests/oidc/provider.mjs``; ``scripts/oidc.sh`` installs it), and a user agent
that signs in through its login page with ``requests``.

Nothing here stands in for mozilla-django-oidc or the provider: the Django side exchanges the code
at the provider's token endpoint, reads its JWKS and userinfo over HTTP, exactly as in production.
"""

import json
import subprocess
import time
from pathlib import Path
from urllib.parse import parse_qs, urljoin, urlsplit

import requests

ROOT = Path(__file__).resolve().parents[2]
PROVIDER_DIR = ROOT / "tests" / "oidc"
CLIENT_ID = "imdsweb-test"
CLIENT_SECRET = "imdsweb-test-client-secret-0123456789"


class OidcProvider:
    def __init__(self, accounts_file, redirect_uris, clock_offset=0, id_token_ttl=600):
        self.accounts_file = Path(accounts_file)
        self.redirect_uris = list(redirect_uris)
        self.clock_offset = clock_offset
        self.id_token_ttl = id_token_ttl
        self.process = None
        self.issuer = None

    def set_accounts(self, accounts):
        """{"alice": {"password": ..., "email": ..., "groups": [...]}}; read at every sign-in."""
        self.accounts_file.write_text(json.dumps(accounts))

    def start(self):
        subprocess.run(["bash", str(ROOT / "scripts" / "oidc.sh")], check=True, timeout=300)
        if not self.accounts_file.exists():
            self.set_accounts({})
        command = ["node", str(PROVIDER_DIR / "provider.mjs"), "--port", "0", "--accounts", str(self.accounts_file),
                   "--client-id", CLIENT_ID, "--client-secret", CLIENT_SECRET,
                   f"--clock-offset={self.clock_offset}", f"--id-token-ttl={self.id_token_ttl}"]
        for uri in self.redirect_uris:
            command += ["--redirect-uri", uri]
        self.log = open(self.accounts_file.with_suffix(".log"), "w+")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=self.log, text=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if line.startswith("READY "):
                self.issuer = line.split()[1]
                return self
            if not line and self.process.poll() is not None:
                break
        self.log.seek(0)
        raise RuntimeError(f"the OIDC provider did not start: {self.log.read()[-2000:]}")

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.log.close()

    def settings(self, settings, **extra):
        """Point the pytest-django ``settings`` fixture at this provider."""
        settings.IMDSWEB_OIDC_ISSUER = self.issuer
        settings.OIDC_RP_CLIENT_ID = CLIENT_ID
        settings.OIDC_RP_CLIENT_SECRET = CLIENT_SECRET
        settings.OIDC_RP_SCOPES = "openid email profile groups"
        settings.AUTHENTICATION_BACKENDS = [
            "axes.backends.AxesStandaloneBackend",
            "fleet.signin.OneCheckAtATimeBackend",
            "fleet.signin.OidcBackend",
        ]
        for name, value in extra.items():
            setattr(settings, name, value)


def provider_login(authorization_url, username, password, stop_at):
    """Open the provider's authorization URL, fill in its login page, follow its redirects until
    one leaves for ``stop_at`` (the relying party); returns that URL. Raises on a refused login."""
    session = requests.Session()
    page = session.get(authorization_url, timeout=10)
    page.raise_for_status()
    assert 'id="login"' in page.text, page.text[:500]
    answer = session.post(urljoin(page.url, urlsplit(page.url).path + "/login"),
                          data={"login": username, "password": password}, allow_redirects=False, timeout=10)
    if answer.status_code == 401:
        raise PermissionError("the provider refused the password")
    for _ in range(10):
        location = urljoin(answer.url, answer.headers["Location"])
        if location.startswith(stop_at):
            return location
        answer = session.get(location, allow_redirects=False, timeout=10)
    raise AssertionError("the provider never sent the browser back")


def sign_in(client, username, password, next_url=None):
    """The whole flow with a Django test client as the relying party's browser; returns the
    callback's response (a redirect to the dashboard on success, to the login page on failure)."""
    start = client.get("/oidc/authenticate/", {"next": next_url} if next_url else {})
    assert start.status_code == 302, start
    callback = provider_login(start["Location"], username, password, stop_at="http://testserver/")
    parts = urlsplit(callback)
    return client.get(parts.path, {key: values[0] for key, values in parse_qs(parts.query).items()})
