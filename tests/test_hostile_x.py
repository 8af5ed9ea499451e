"""Property tests: hostile parameters on the X routes never give a 5xx.

The app runs in real mode with an app-only bearer token and a saved, fresh
timeline, and every call to X is answered 500 by requests_mock, so:
- `/tweets` answers 200, 304 or 400 from the saved timeline, and 503 for an
  `exclude` choice whose feed was never saved;
- `/tweets/liked` answers 503 user_context_required (app-only auth) or 400;
- `/tweets/search` answers 400, 429 (too many new queries) or 503 (X failed);
- `/tweets/embed` answers 200, 304, 400, 429 or 503.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests_mock
from conftest import TEST_PASSWORD
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feed import Fetched
from timeutil import to_iso

MOMENT = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
X_API = "http://127.0.0.1:9/x"
PARAMETERS = ("limit", "after", "q", "format", "exclude", "view")
DOCUMENTED = {
    "/tweets": {200, 304, 400, 503},
    "/tweets/liked": {400, 503},
    "/tweets/search": {400, 429, 503},
    "/tweets/embed": {200, 304, 400, 429, 503},
}
PROPERTY_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


class Clock:
    def __call__(self) -> datetime:
        return MOMENT


def tweet(number: int) -> dict[str, Any]:
    return {
        "id": str(1_940_000_000_000_000_000 + number),
        "text": f"Post {number} <script>alert(1)</script> #sun",
        "created_at": to_iso(MOMENT - timedelta(hours=number + 1)),
        "url": f"https://x.com/owner_handle/status/{number}",
        "author": {
            "username": "owner_handle",
            "name": "Owner",
            "profile_image_url": None,
        },
        "media": [],
        "metrics": {"like_count": number},
    }


@pytest.fixture(scope="module")
def x_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """ownfeed with app-only X auth and a saved fresh timeline."""
    from app import create_app
    from tweets import x_feed

    folder: Path = tmp_path_factory.mktemp("hostile-x")
    app = create_app(
        {
            "TESTING": True,
            "INSTANCE_PATH": str(folder / "instance"),
            "SECRET_KEY": "hostile-x-session-key",
            "OWNFEED_SANDBOX": False,
            "INSTAGRAM_CLIENT_ID": "1234567890",
            "INSTAGRAM_CLIENT_SECRET": "hostile-x-instagram-secret",
            "INSTAGRAM_REDIRECT_URI": "http://127.0.0.1/admin/callback/instagram",
            "ADMIN_PASSWORD": TEST_PASSWORD,
            "X_BEARER_TOKEN": "hostile-x-bearer-token",
            "X_USERNAME": "owner_handle",
            "X_API_URL": X_API,
            "X_TOKEN_URL": f"{X_API}/2/oauth2/token",
            "X_SEARCH_NEW_PER_HOUR": 5,
            "CLOCK": Clock(),
        }
    )
    posts = [tweet(number) for number in range(30)]
    with app.app_context():
        saved = x_feed("timeline").refresh_now(
            lambda: Fetched(posts, {"username": "owner_handle"})
        )
    assert len(saved.posts) == len(posts)
    yield app


@pytest.fixture(scope="module")
def failing_x() -> Iterator[requests_mock.Mocker]:
    """Answer every call to X with a 500, and count them."""
    with requests_mock.Mocker(real_http=False) as mocker:
        mocker.register_uri(
            requests_mock.ANY,
            re.compile(r"http://127\.0\.0\.1:9/.*"),
            status_code=500,
            json={"title": "Internal Error", "status": 500},
        )
        yield mocker


values = st.one_of(
    st.sampled_from(["", "0", "-1", "101", "1e3", "%00", "../", "'\"><svg>", "٣"]),
    st.text(max_size=300),
)
queries = st.fixed_dictionaries(
    {},
    optional={
        "limit": st.one_of(st.integers(-5, 150).map(str), values),
        "after": values,
        "q": st.one_of(values, st.text(min_size=500, max_size=600)),
        "format": st.one_of(st.sampled_from(["json", "html"]), values),
        "exclude": st.one_of(
            st.sampled_from(["replies", "retweets", "replies,retweets"]), values
        ),
        "view": st.one_of(st.sampled_from(["timeline", "search", "liked"]), values),
    },
)


@PROPERTY_SETTINGS
@given(path=st.sampled_from(sorted(DOCUMENTED)), query=queries)
def test_hostile_tweets_documented_status(
    x_app: Any, failing_x: Any, path: str, query: dict[str, str]
) -> None:
    response = x_app.test_client().get(path, query_string=query)

    assert response.status_code in DOCUMENTED[path], (path, response.status_code)
    if path == "/tweets/embed" and response.status_code == 400:
        # The iframe shows an HTML page that names the parameter.
        assert response.mimetype == "text/html"
        assert "Parameter " in response.get_data(as_text=True)
        assert "<script>alert" not in response.get_data(as_text=True)
        return
    if response.status_code in (400, 429) or (
        response.status_code == 503 and response.mimetype == "application/json"
    ):
        error = response.get_json()["error"]
        assert error["message"]
        if response.status_code == 400:
            assert error["parameter"] in PARAMETERS
    if response.status_code == 200 and response.mimetype == "text/html":
        assert "<script>alert" not in response.get_data(as_text=True)
