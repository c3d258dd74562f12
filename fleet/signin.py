"""Signing in and staying signed in: single sign-on (OpenID Connect), the lockout answer, session
timeouts and the private-cache header.

- **Single sign-on** is mozilla-django-oidc's authorization-code flow (with PKCE and a nonce),
  configured from one issuer URL: the endpoints come from the issuer's discovery document, which
  must name exactly that issuer. On top of the library this module checks what it leaves out (the
  ID token's issuer, audience and expiry; userinfo's subject equal to the token's) and turns every
  failure into a message on the login page instead of a 500. Users are matched by (issuer,
  subject) (``OidcIdentity``), created on first sign-in, and their role is taken from the groups
  claim at every sign-in: removed from the group, removed from the role.
- **Lockouts** are django-axes' (``AxesStandaloneBackend`` first, so a locked-out username or
  address is refused before any password is hashed); this module shapes the 429 answer (with
  when to retry) and logs every refused attempt.
- **Sessions** end after ``IMDSWEB_SESSION_IDLE_MINUTES`` without a request and
  ``IMDSWEB_SESSION_MAX_HOURS`` after signing in, whatever happens in between.
"""

import hashlib
import ipaddress
import logging
import math
import threading
import time

import jwt
import requests
from axes.backends import AxesStandaloneBackend
from axes.helpers import get_client_ip_address
from axes.models import AccessAttempt
from axes.signals import user_locked_out
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.auth import logout
from django.contrib.auth import views as auth_views
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.models import User
from django.contrib.auth.signals import user_logged_in, user_login_failed
from django.contrib.auth.views import redirect_to_login
from django.core.cache import cache
from django.core.exceptions import SuspiciousOperation
from django.db import transaction
from django.db.models import Max, Q
from django.dispatch import receiver
from django.http import Http404, HttpResponseNotAllowed
from django.shortcuts import redirect, render, resolve_url
from django.utils import timezone
from django.utils.cache import patch_cache_control
from mozilla_django_oidc.auth import OIDCAuthenticationBackend
from mozilla_django_oidc.views import OIDCAuthenticationCallbackView, OIDCAuthenticationRequestView

from .models import OidcIdentity
from .roles import ROLE_ORDER, assign_role

log = logging.getLogger(__name__)

DISCOVERY_TTL_SECONDS = 3600
# Clock skew tolerated between this server and the provider when checking exp / iat.
CLOCK_LEEWAY_SECONDS = 30
AUTH_TIME_KEY = "imdsweb_auth_time"
TOUCHED_KEY = "imdsweb_touched"


class SignInError(Exception):
    """A single sign-on that must not complete; the message is shown on the login page."""


# ---------------------------------------------------------------- the provider


_discovery_lock = threading.Lock()
_discovery_cache = {}


def discovery():
    """The issuer's discovery document (OpenID Connect Discovery 1.0), fetched on first use and
    kept for an hour. Refused unless it names exactly the configured issuer (section 4.3)."""
    issuer = settings.IMDSWEB_OIDC_ISSUER
    with _discovery_lock:
        cached = _discovery_cache.get(issuer)
        if cached and time.monotonic() - cached[0] < DISCOVERY_TTL_SECONDS:
            return cached[1]
    url = f"{issuer}/.well-known/openid-configuration"
    try:
        response = requests.get(url, timeout=settings.OIDC_TIMEOUT)
        response.raise_for_status()
        document = response.json()
    except (requests.RequestException, ValueError) as exc:
        log.warning("single sign-on: discovery document %s unreadable: %s", url, exc)
        raise SignInError("The identity provider could not be reached. Try again in a moment.") from exc
    if document.get("issuer") != issuer:
        log.warning("single sign-on: %s names issuer %r, not IMDSWEB_OIDC_ISSUER %r", url,
                    document.get("issuer"), issuer)
        raise SignInError("Single sign-on is misconfigured: the identity provider's issuer does not match "
                          "IMDSWEB_OIDC_ISSUER. Sign-in refused.")
    missing = [key for key in ("authorization_endpoint", "token_endpoint", "userinfo_endpoint", "jwks_uri")
               if not document.get(key)]
    if missing:
        log.warning("single sign-on: %s lacks %s", url, ", ".join(missing))
        raise SignInError("Single sign-on is misconfigured: the identity provider's discovery document is incomplete.")
    with _discovery_lock:
        _discovery_cache[issuer] = (time.monotonic(), document)
    return document


def role_for(claims):
    """The highest imdsweb role the groups claim maps to (IMDSWEB_OIDC_*_GROUPS), or None."""
    groups = claims.get(settings.IMDSWEB_OIDC_GROUPS_CLAIM) or []
    if isinstance(groups, str):
        groups = [groups]
    groups = {str(group) for group in groups}
    for role in reversed(ROLE_ORDER):
        if groups & set(settings.IMDSWEB_OIDC_ROLE_GROUPS.get(role, ())):
            return role
    return None


class OidcBackend(OIDCAuthenticationBackend):
    """mozilla-django-oidc's backend, with the provider found by discovery, the ID token fully
    verified, users keyed by (issuer, subject) and the role re-derived at every sign-in."""

    def authenticate(self, request, **kwargs):
        if request is None or "nonce" not in kwargs:
            return None  # a password login: not ours
        try:
            document = discovery()
            self.OIDC_OP_TOKEN_ENDPOINT = document["token_endpoint"]
            self.OIDC_OP_USER_ENDPOINT = document["userinfo_endpoint"]
            self.OIDC_OP_JWKS_ENDPOINT = document["jwks_uri"]
            return super().authenticate(request, **kwargs)
        except SignInError as exc:
            request.signin_error = str(exc)
        except requests.HTTPError as exc:
            body = exc.response.text[:300] if exc.response is not None else ""
            log.warning("single sign-on refused by the provider: %s %s", exc.response.status_code
                        if exc.response is not None else "", body)
            request.signin_error = "The identity provider refused the sign-in (the code was invalid, used or expired)."
        except requests.RequestException as exc:
            log.warning("single sign-on: provider unreachable: %s", exc)
            request.signin_error = "The identity provider could not be reached. Try again in a moment."
        except (SuspiciousOperation, jwt.InvalidTokenError) as exc:
            log.warning("single sign-on: token refused: %s", exc)
            request.signin_error = f"The identity provider's token was refused: {exc}"
        return None

    def verify_token(self, token, **kwargs):
        """Signature (the provider's JWKS), issuer, audience, expiry and nonce. The library checks
        only the signature and the nonce, and lets PyJWT's expiry error escape as a 500."""
        if not token:
            raise SuspiciousOperation("no ID token in the provider's answer")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise SuspiciousOperation(f"not a JWT ({exc})") from exc
        if header.get("alg") != self.OIDC_RP_SIGN_ALGO:
            raise SuspiciousOperation(f"signed with {header.get('alg')!r}, not {self.OIDC_RP_SIGN_ALGO}")
        key = self.retrieve_matching_jwk(token)
        try:
            payload = jwt.decode(
                token, key, algorithms=[self.OIDC_RP_SIGN_ALGO], audience=self.OIDC_RP_CLIENT_ID,
                issuer=settings.IMDSWEB_OIDC_ISSUER, leeway=CLOCK_LEEWAY_SECONDS,
                options={"require": ["iss", "aud", "sub", "exp", "iat"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise SuspiciousOperation("the ID token has expired") from exc
        except jwt.InvalidIssuerError as exc:
            raise SuspiciousOperation("the ID token was issued by another issuer") from exc
        except jwt.InvalidAudienceError as exc:
            raise SuspiciousOperation("the ID token was issued for another client") from exc
        except jwt.InvalidTokenError as exc:
            raise SuspiciousOperation(f"the ID token is invalid ({exc})") from exc
        if kwargs.get("nonce") != payload.get("nonce"):
            raise SuspiciousOperation("the ID token's nonce does not match this sign-in")
        return payload

    def get_userinfo(self, access_token, id_token, payload):
        """The ID token's claims completed by the userinfo endpoint's (some providers send the
        groups in one, some in the other); both must be about the same subject."""
        userinfo = super().get_userinfo(access_token, id_token, payload)
        if userinfo.get("sub") != payload.get("sub"):
            raise SuspiciousOperation("userinfo is about another subject than the ID token")
        return {**payload, **userinfo}

    def verify_claims(self, claims):
        return bool(claims.get("sub"))

    def filter_users_by_claims(self, claims):
        return User.objects.filter(oidc_identity__issuer=settings.IMDSWEB_OIDC_ISSUER,
                                   oidc_identity__subject=claims["sub"])

    @staticmethod
    def _role_or_refuse(claims, user=None):
        role = role_for(claims)
        if role is None:
            if user is not None:
                # Removed from every imdsweb group at the provider: no role here either.
                with transaction.atomic():
                    user.groups.clear()
                    user.is_staff = False
                    user.save(update_fields=["is_staff"])
            log.warning("single sign-on: %s has no imdsweb group in claim %r", claims.get("sub"),
                        settings.IMDSWEB_OIDC_GROUPS_CLAIM)
            raise SignInError("Your identity provider account is not in any imdsweb group: ask an admin "
                              "for the viewer, operator or admin group.")
        return role

    def create_user(self, claims):
        role = self._role_or_refuse(claims)
        username = str(claims.get(settings.IMDSWEB_OIDC_USERNAME_CLAIM) or claims.get("email") or claims["sub"])[:150]
        if User.objects.filter(username=username).exists():
            log.warning("single sign-on: %s would be user %r, which exists as a local account", claims["sub"], username)
            raise SignInError(f"A local account named {username!r} exists: an admin must remove or rename it "
                              "before you can sign in with single sign-on.")
        with transaction.atomic():
            user = User(username=username, email=claims.get("email", "")[:254],
                        first_name=str(claims.get("given_name", ""))[:150],
                        last_name=str(claims.get("family_name", ""))[:150])
            user.set_unusable_password()  # single sign-on only: never a password login
            user.save()
            OidcIdentity.objects.create(user=user, issuer=settings.IMDSWEB_OIDC_ISSUER, subject=claims["sub"],
                                        groups=self._groups(claims))
            assign_role(user, role)
        log.info("single sign-on: created %s (%s) as %s", username, claims["sub"], role)
        return user

    def update_user(self, user, claims):
        role = self._role_or_refuse(claims, user)
        with transaction.atomic():
            assign_role(user, role)
            OidcIdentity.objects.filter(user=user).update(groups=self._groups(claims))
        return user

    @staticmethod
    def _groups(claims):
        groups = claims.get(settings.IMDSWEB_OIDC_GROUPS_CLAIM) or []
        return [groups] if isinstance(groups, str) else [str(group) for group in groups]


def _require_sso():
    if not settings.IMDSWEB_OIDC_ISSUER:
        raise Http404("Single sign-on is not configured.")


class OidcSignInView(OIDCAuthenticationRequestView):
    """Sends the browser to the provider's authorization endpoint (found by discovery)."""

    def get(self, request):
        _require_sso()
        try:
            self.OIDC_OP_AUTH_ENDPOINT = discovery()["authorization_endpoint"]
        except SignInError as exc:
            messages.error(request, str(exc))
            return redirect(settings.LOGIN_URL)
        return super().get(request)


class OidcCallbackView(OIDCAuthenticationCallbackView):
    """The provider sends the browser back here; every failure ends on the login page, saying why."""

    def get(self, request):
        _require_sso()
        if request.GET.get("error"):
            log.warning("single sign-on: the provider answered %s: %s", request.GET.get("error")[:100],
                        request.GET.get("error_description", "")[:300])
            request.signin_error = f"The identity provider answered: {request.GET.get('error')[:100]}."
        try:
            return super().get(request)
        except SuspiciousOperation as exc:  # a state this session did not start (replayed, other tab)
            log.warning("single sign-on: callback refused: %s", exc)
            request.signin_error = "This sign-in was not started here or was already used: start again."
            return self.login_failure()

    @property
    def failure_url(self):
        return resolve_url(settings.LOGIN_URL)

    def login_failure(self):
        messages.error(self.request, getattr(self.request, "signin_error", None)
                       or "Single sign-on did not complete: start again.")
        return super().login_failure()


# ---------------------------------------------------------------- lockouts


def client_address(request):
    """The client's address for lockouts (django-axes' AXES_CLIENT_IP_CALLABLE): the connection's,
    or behind IMDSWEB_PROXY_COUNT proxies the N-th address from the right of X-Forwarded-For (each
    proxy appends the address it saw; anything further left was written by the client). Written
    here because this is the whole rule, where django-ipware's proxy_count meaning changed between
    its releases."""
    count = settings.IMDSWEB_PROXY_COUNT
    if count:
        hops = [hop.strip() for hop in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if hop.strip()]
        if len(hops) >= count:
            try:
                return str(ipaddress.ip_address(hops[-count]))
            except ValueError:
                log.warning("X-Forwarded-For %r is not an address: using the connection's", hops[-count][:100])
    return request.META.get("REMOTE_ADDR")


CHECK_LOCK_SECONDS = 15  # a lock left by a crashed request frees itself after this long


class OneCheckAtATimeBackend(ModelBackend):
    """Django's password check, one at a time per username and per client address.

    Attempts of a flood that arrive together would all pass the lockout check before the first
    failure is counted, and each would cost a password hash (about a second of CPU): here they wait
    their turn sleeping, and each asks django-axes again once it is its turn, so only
    AXES_FAILURE_LIMIT hashes are ever computed before the lockout. The lock is a cache key (Redis
    in production; django's cache ``add`` is atomic there) held until axes has counted the attempt
    (``user_login_failed``) or the user is signed in.
    """

    def authenticate(self, request, username=None, password=None, **kwargs):
        if request is None or username is None or password is None:
            return None
        keys = sorted({f"signin-check:user:{hashlib.sha256(username.encode()).hexdigest()}",
                       f"signin-check:address:{get_client_ip_address(request) or '-'}"})
        request.signin_check_locks = []
        try:
            for key in keys:  # always in the same order: two attempts never wait on each other's
                deadline = time.monotonic() + CHECK_LOCK_SECONDS
                while not (acquired := cache.add(key, 1, CHECK_LOCK_SECONDS)) and time.monotonic() < deadline:
                    time.sleep(0.02)
                if acquired:  # else its holder died: the key expires by itself, never ours to delete
                    request.signin_check_locks.append(key)
            # Its turn: locked out meanwhile? Then refused here, without a hash (raises).
            AxesStandaloneBackend().authenticate(request, username=username, password=password, **kwargs)
            user = super().authenticate(request, username=username, password=password, **kwargs)
        except BaseException:
            release_check_locks(request)
            raise
        if user is not None:
            release_check_locks(request)
        return user  # on a failure, the locks go once axes has counted it (below)


def release_check_locks(request, **kwargs):
    for key in getattr(request, "signin_check_locks", ()):
        cache.delete(key)
    if request is not None:
        request.signin_check_locks = []


@receiver(user_login_failed, dispatch_uid="fleet.signin.release_check_locks")
def _release_after_axes_counted(sender, credentials, request=None, **kwargs):
    # Connected after axes' own receiver (axes comes first in INSTALLED_APPS): the failure is counted.
    release_check_locks(request)


def _retry_after_seconds(request, credentials):
    """Until the newest recorded failure of this username or address leaves the window (attempts
    during a lockout are not recorded, so they do not move it)."""
    cooloff = settings.AXES_COOLOFF_TIME
    username = (credentials or {}).get("username")
    address = getattr(request, "axes_ip_address", None)
    newest = AccessAttempt.objects.filter(
        (Q(username=username) if username else Q(pk__in=[])) | (Q(ip_address=address) if address else Q(pk__in=[])),
        attempt_time__gte=timezone.now() - cooloff,
    ).aggregate(newest=Max("attempt_time"))["newest"]
    if newest is None:
        return int(cooloff.total_seconds())
    return max(1, math.ceil((newest + cooloff - timezone.now()).total_seconds()))


def lockout_response(request, original_response=None, credentials=None):
    """django-axes' answer to a locked-out username or address: 429, and when to try again."""
    seconds = _retry_after_seconds(request, credentials)
    time.sleep(settings.IMDSWEB_LOCKOUT_DELAY_SECONDS)
    response = render(request, "registration/locked_out.html",
                      {"minutes": math.ceil(seconds / 60), "admin_site": request.path.startswith("/admin/")},
                      status=429)
    response["Retry-After"] = str(seconds)
    return response


@receiver(user_locked_out, dispatch_uid="fleet.signin.log_locked_out")
def _log_locked_out(sender, request=None, username=None, ip_address=None, **kwargs):
    log.warning("sign-in refused, locked out: username %r from %s (%s)", username, ip_address,
                getattr(request, "path", ""))


# ---------------------------------------------------------------- sessions and caching


@receiver(user_logged_in, dispatch_uid="fleet.signin.auth_time")
def _remember_auth_time(sender, request, user, **kwargs):
    if request is not None and hasattr(request, "session"):
        request.session[AUTH_TIME_KEY] = request.session[TOUCHED_KEY] = int(time.time())


class SessionTimeoutMiddleware:
    """The idle timeout is the session's age (SESSION_COOKIE_AGE), pushed back when the user is
    active; writing the session on every request would cost a database write per page, so the
    expiry moves at most once per IMDSWEB_SESSION_TOUCH_SECONDS (a minute; or a tenth of the idle
    time). The absolute limit is
    checked here."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.user.is_authenticated:
            now = int(time.time())
            session = request.session
            auth_time = session.get(AUTH_TIME_KEY)
            if auth_time is None:
                session[AUTH_TIME_KEY] = session[TOUCHED_KEY] = now
            elif now - auth_time > settings.IMDSWEB_SESSION_MAX_HOURS * 3600:
                logout(request)
                messages.info(request, "Your session has ended: please sign in again.")
                return redirect_to_login(request.get_full_path())
            elif now - session.get(TOUCHED_KEY, 0) > min(settings.IMDSWEB_SESSION_TOUCH_SECONDS,
                                                         settings.SESSION_COOKIE_AGE // 10):
                session[TOUCHED_KEY] = now
        return self.get_response(request)


class PrivateCacheMiddleware:
    """Nothing a signed-in user sees (pages, htmx fragments, the CSV) may be kept by a shared or
    browser cache: ``Cache-Control: private, no-store``."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            patch_cache_control(response, private=True, no_store=True)
        return response


# ---------------------------------------------------------------- the login page


class LoginView(auth_views.LoginView):
    """Django's login page, offering single sign-on when it is configured; with local logins
    off it shows only that, and a password POST is refused (405) without being checked."""

    def get_context_data(self, **kwargs):
        return super().get_context_data(**kwargs) | {
            "local_login": settings.IMDSWEB_LOCAL_LOGIN,
            "sso_enabled": bool(settings.IMDSWEB_OIDC_ISSUER),
            "sso_name": settings.IMDSWEB_OIDC_PROVIDER_NAME,
        }

    def post(self, request, *args, **kwargs):
        if not settings.IMDSWEB_LOCAL_LOGIN:
            return HttpResponseNotAllowed(["GET", "HEAD"], "Local logins are switched off: use single sign-on.")
        return super().post(request, *args, **kwargs)


def admin_login(request):
    """The admin site's login, or, with local logins off, the app's sign-in page (the admin's
    form would only ever answer "wrong password")."""
    if settings.IMDSWEB_LOCAL_LOGIN:
        return admin.site.login(request)
    return redirect_to_login(request.GET.get("next") or "/admin/")
