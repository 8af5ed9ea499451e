"""HTTP hardening: security headers, HTTPS behind a proxy, and trusted hosts.

- Every HTML page gets a Content-Security-Policy. Admin and sandbox pages run
  no script at all, so theirs allows none.
- Every response gets `X-Content-Type-Options: nosniff`.
- Over HTTPS, responses get HSTS and the session cookie gets `Secure`. Whether a
  request came over HTTPS behind a reverse proxy is read from X-Forwarded-*
  headers only when TRUSTED_PROXIES sets how many proxies to trust.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Flask, Response, current_app, has_request_context, request
from flask.sessions import SecureCookieSessionInterface
from werkzeug.middleware.proxy_fix import ProxyFix

HSTS = "max-age=31536000; includeSubDomains"
# The authorize pages a Generate form's redirect may lead to (CSP form-action
# applies to redirects after a form submission).
AUTHORIZE_URL_KEYS = ("INSTAGRAM_AUTHORIZE_URL", "X_AUTHORIZE_URL")


def init_app(app: Flask) -> None:
    """Install the proxy handling and the header hook on `app`."""
    proxies = app.config.get("TRUSTED_PROXIES") or 0
    if proxies:
        app.wsgi_app = ProxyFix(
            app.wsgi_app, x_for=proxies, x_proto=proxies, x_host=proxies, x_port=proxies
        )
    app.after_request(add_security_headers)
    app.session_interface = HttpsAwareSessionInterface()


class HttpsAwareSessionInterface(SecureCookieSessionInterface):
    """Mark the session cookie Secure whenever the request came over HTTPS."""

    def get_cookie_secure(self, app: Flask) -> bool:
        configured = super().get_cookie_secure(app)
        return configured or (has_request_context() and request.is_secure)


def add_security_headers(response: Response) -> Response:
    """Add nosniff everywhere, a CSP on HTML pages, and HSTS and Secure over HTTPS."""
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    # A 304 has no body to protect, and is the cheapest response to keep cheap.
    is_page = response.mimetype == "text/html" and response.status_code != 304
    if is_page and "Content-Security-Policy" not in response.headers:
        response.headers["Content-Security-Policy"] = page_policy()
    if request.is_secure:
        response.headers.setdefault("Strict-Transport-Security", HSTS)
    return response


def page_policy() -> str:
    """Return the CSP of the admin, sandbox and fragment pages: no script at all."""
    form_targets = ["'self'", *_authorize_origins()]
    return (
        "default-src 'none'; img-src 'self' https: data:; style-src 'self'; "
        f"form-action {' '.join(form_targets)}; frame-ancestors 'none'; "
        "base-uri 'none'"
    )


def _authorize_origins() -> list[str]:
    origins = []
    for key in AUTHORIZE_URL_KEYS:
        url = current_app.config.get(key)
        if url:
            parts = urlsplit(url)
            origins.append(f"{parts.scheme}://{parts.netloc}")
    return sorted(set(origins))
