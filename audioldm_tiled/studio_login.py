"""The studio behind ``--auth``: every route but the login page asks for the login.

Gradio's own check guards the routes that run or read something, but not all of them: ``/gradio_api/cancel``,
``/gradio_api/reset`` and FastAPI's ``/openapi.json`` answer without it, so anyone who reaches the port could stop
a logged-in user's render. This middleware sits in front of every route and lets through, without Gradio's login
cookie, only what draws the login page and the login itself.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse
from starlette.websockets import WebSocketClose

# What a browser fetches to show the login page and to log in, before it holds the cookie; and the one-time
# trigger that Gradio's launch asks for itself when the server is up (it returns a boolean, nothing else).
OPEN_PATHS = frozenset({"/", "/login", "/login/", "/favicon.ico", "/theme.css", "/gradio_api/theme.css",
                        "/manifest.json", "/robots.txt", "/gradio_api/login_check", "/gradio_api/login_check/",
                        "/gradio_api/startup-events"})
OPEN_FOLDERS = ("/assets/", "/static/", "/svelte/", "/pwa_icon")


def open_without_login(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_FOLDERS)


class LoginRequired:
    """ASGI middleware for Gradio's app: a request without a valid login cookie gets 401 on every route but
    ``OPEN_PATHS`` and ``OPEN_FOLDERS`` (for the app's ``add_middleware`` or the ``middleware`` argument)."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket") or open_without_login(scope["path"]) or \
                self._logged_in(scope):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await WebSocketClose(code=1008)(scope, receive, send)
            return
        await JSONResponse({"detail": "Not authenticated"}, status_code=401)(scope, receive, send)

    @staticmethod
    def _logged_in(scope: dict) -> bool:
        """Gradio's own test (``App.get_current_user``): one of its two login cookies names a token it issued."""
        gradio_app = scope["app"]  # Starlette puts the application in the scope before any middleware runs
        cookies = HTTPConnection(scope).cookies
        token = cookies.get(f"access-token-{gradio_app.cookie_id}") or \
            cookies.get(f"access-token-unsecure-{gradio_app.cookie_id}")
        return token is not None and gradio_app.tokens.get(token) is not None
