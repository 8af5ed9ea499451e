"""Access control for the admin pages and the sandbox's control panels.

It depends on nothing but Flask, so any blueprint can import it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from flask import abort, current_app, redirect, request, session, url_for


def password_required() -> bool:
    """Tell whether the admin pages need a password (always, outside the sandbox)."""
    config = current_app.config
    return bool(config.get("ADMIN_PASSWORD") or config.get("ADMIN_PASSWORD_HASH"))


def is_admin() -> bool:
    """Tell whether the current session may use the admin pages."""
    if not password_required():
        return True
    return session.get("admin") is True


def admin_only(view: Callable[..., Any]) -> Callable[..., Any]:
    """Send anonymous requests to the login page, as the admin blueprint does.

    For pages outside that blueprint, such as the sandbox's control panels.
    """

    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if is_admin():
            return view(*args, **kwargs)
        if request.method == "GET":
            return redirect(url_for("admin.login", next=request.full_path.rstrip("?")))
        abort(403)

    return wrapped
