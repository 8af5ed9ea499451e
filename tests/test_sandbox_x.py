"""The X client against the X sandbox, over real HTTP on a loopback port."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import pytest
import requests
from flask import Blueprint, Flask
from werkzeug.serving import make_server

import sandbox_state
import sandbox_x
import sandbox_x_auth
from extensions import csrf
from x import (
    BearerAuth,
    XAuthError,
    XClient,
    XNotFoundError,
    XRateLimitedError,
    XUserToken,
    oauth1_auth,
)

ROOT = Path(__file__).resolve().parents[1]
SECRET_KEY = "x-sandbox-test-key"
CREDS = sandbox_x.credentials(SECRET_KEY)
OWNER_ID = "1800000000000000001"
REDIRECT_URI = "http://127.0.0.1:9/admin/callback/x"
LISBON = "Three photos from Lisbon: Café da Manhã, crème brûlée & the old tram #Café"
VERIFIER = "v3rifier-" + "a1B2c3D4e5" * 5


class Clock:
    """A settable clock for the `ownfeed_clock` extension, starting at real time.

    It starts at the real time because oauthlib stamps OAuth 1.0a requests with
    the real clock and the sandbox allows five minutes of difference.
    """

    def __init__(self, moment: datetime | None = None) -> None:
        self.moment = moment or datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.moment

    def advance(self, **delta: float) -> None:
        self.moment += timedelta(**delta)

    def unix(self) -> float:
        return self.moment.timestamp()


class CountingSession(requests.Session):
    """A session that counts the requests it sends."""

    def __init__(self) -> None:
        super().__init__()
        self.sent = 0

    def request(self, *args: Any, **kwargs: Any) -> requests.Response:
        self.sent += 1
        return super().request(*args, **kwargs)


def make_app(instance_path: Path, clock: Clock, **config: Any) -> Flask:
    """Build the smallest app that serves the X sandbox like ownfeed's factory."""
    app = Flask("sandbox_x_test", root_path=str(ROOT), instance_path=str(instance_path))
    app.config.update(SECRET_KEY=SECRET_KEY)
    app.config.update(config)
    csrf.init_app(app)
    # base.html links to these admin pages.
    admin = Blueprint("admin", __name__, url_prefix="/admin")
    for name in ("generate", "summary", "logout"):
        admin.add_url_rule(f"/{name}", name, lambda: "admin stub")
    app.register_blueprint(admin)
    app.register_blueprint(sandbox_x.bp)
    app.extensions["ownfeed_clock"] = clock
    return app


@dataclass
class Live:
    """A running sandbox with an X client pointed at it."""

    url: str
    app: Flask
    clock: Clock
    client: XClient
    session: CountingSession
    instance_path: Path

    def oauth1(self) -> Any:
        return oauth1_auth(
            CREDS["api_key"],
            CREDS["api_secret"],
            CREDS["access_token"],
            CREDS["access_token_secret"],
        )

    def bearer(self) -> BearerAuth:
        token = self.client.fetch_app_bearer(CREDS["api_key"], CREDS["api_secret"])
        return BearerAuth(token)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def start(tmp_path: Path, clock: Clock) -> Iterator[Callable[..., Live]]:
    """Return a function that starts the sandbox with extra config on 127.0.0.1:0."""
    servers = []

    def factory(**config: Any) -> Live:
        instance_path = tmp_path / f"instance-{len(servers)}"
        app = make_app(instance_path, clock, **config)
        server = make_server("127.0.0.1", 0, app, threaded=True)
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        thread.start()
        servers.append((server, thread))
        url = f"http://127.0.0.1:{server.server_port}"
        session = CountingSession()
        client = XClient(sandbox_x.endpoints(url), session=session, clock=clock.unix)
        return Live(url, app, clock, client, session, instance_path)

    yield factory
    for server, thread in servers:
        server.shutdown()
        thread.join(timeout=5)
        server.server_close()


@pytest.fixture
def live(start) -> Live:
    return start()


def csrf_token_from(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "the page has no csrf_token field"
    return match.group(1)


def challenge_of(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def press(
    live: Live,
    decision: str = "allow",
    *,
    verifier: str = VERIFIER,
    redirect_uri: str = REDIRECT_URI,
    **overrides: str,
) -> requests.Response:
    """Open the authorize page as a browser would, and press Allow or Deny."""
    browser = requests.Session()
    url = live.client.authorize_url(
        CREDS["client_id"], redirect_uri, "state-1", challenge_of(verifier)
    )
    query = {name: values[0] for name, values in parse_qs(urlsplit(url).query).items()}
    query.update(overrides)
    page = browser.get(url.split("?")[0], params=query, timeout=10)
    assert page.status_code == 200, page.text
    form = {**query, "csrf_token": csrf_token_from(page.text), "decision": decision}
    return browser.post(url.split("?")[0], data=form, allow_redirects=False, timeout=10)


def get_code(live: Live, **options: str) -> str:
    response = press(live, **options)
    assert response.status_code == 303
    query = parse_qs(urlsplit(response.headers["Location"]).query)
    assert query["state"] == ["state-1"]
    return query["code"][0]


def connect(live: Live) -> XUserToken:
    code = get_code(live)
    return live.client.exchange_code(
        CREDS["client_id"], CREDS["client_secret"], code, REDIRECT_URI, VERIFIER
    )


def control(live: Live, action: str) -> requests.Response:
    browser = requests.Session()
    page = browser.get(f"{live.url}/sandbox/x/", timeout=10)
    form = {"csrf_token": csrf_token_from(page.text), "action": action}
    return browser.post(f"{live.url}/sandbox/x/control", data=form, timeout=10)


def raw_get(live: Live, path: str, auth: Any, **params: str) -> requests.Response:
    return requests.get(
        f"{live.url}/sandbox/x{path}", params=params, auth=auth, timeout=10
    )


class TamperedSignature(requests.auth.AuthBase):
    """OAuth 1.0a auth whose signature is replaced after signing."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request = self.inner(request)
        header = request.headers["Authorization"]
        if isinstance(header, bytes):
            header = header.decode()
        forged = 'oauth_signature="' + quote("A" * 27 + "=", safe="") + '"'
        request.headers["Authorization"] = re.sub(
            r'oauth_signature="[^"]*"', forged, header
        )
        return request


# Credentials --------------------------------------------------------------------------


def test_credentials_derived_from_secret_key():
    other = sandbox_x.credentials("another-key")
    assert set(CREDS) == {
        "api_key",
        "api_secret",
        "access_token",
        "access_token_secret",
        "client_id",
        "client_secret",
    }
    assert all(CREDS[name] != other[name] for name in CREDS)
    assert CREDS == sandbox_x.credentials(SECRET_KEY)
    assert CREDS["access_token"].startswith(f"{OWNER_ID}-")


def test_endpoints_point_at_sandbox():
    endpoints = sandbox_x.endpoints("http://127.0.0.1:5000/")
    assert endpoints.api_url == "http://127.0.0.1:5000/sandbox/x"
    assert (
        endpoints.authorize_url == "http://127.0.0.1:5000/sandbox/x/i/oauth2/authorize"
    )
    assert endpoints.token_url == "http://127.0.0.1:5000/sandbox/x/2/oauth2/token"


# App-only bearer ----------------------------------------------------------------------


def test_app_bearer_same_every_time(live):
    first = live.client.fetch_app_bearer(CREDS["api_key"], CREDS["api_secret"])
    second = live.client.fetch_app_bearer(CREDS["api_key"], CREDS["api_secret"])
    assert first == second
    assert first.startswith("AAAAAAAAAAAAAAAAAAAAA")


def test_app_bearer_wrong_secret_code_99(live):
    with pytest.raises(XAuthError) as caught:
        live.client.fetch_app_bearer(CREDS["api_key"], "wrong-secret")
    assert caught.value.code == 99
    assert caught.value.status == 403


def test_app_bearer_non_ascii_credentials_code_99(live):
    with pytest.raises(XAuthError) as caught:
        live.client.fetch_app_bearer("clé", "sécret ☃")
    assert caught.value.code == 99


def test_app_bearer_configured_token_accepted(start):
    live = start(X_BEARER_TOKEN="AAAAAAAAAAAAAAAAAAAAAconfigured")
    fetched = live.client.fetch_app_bearer(CREDS["api_key"], CREDS["api_secret"])
    user = live.client.get_user_by_username(BearerAuth(fetched), "sandbox_owner")
    assert fetched == "AAAAAAAAAAAAAAAAAAAAAconfigured"
    assert user["id"] == OWNER_ID


def test_app_bearer_reads_timeline(live):
    auth = live.bearer()
    owner = live.client.get_user_by_username(auth, "sandbox_owner")

    def fetch(token, size):
        return live.client.get_timeline(
            auth, owner["id"], max_results=size, pagination_token=token
        )

    items = live.client.iter_pages(fetch, 500)
    texts = [item["text"] for item in items]
    media_types = {media["type"] for item in items for media in item["media"]}
    assert owner["id"] == OWNER_ID
    assert len(items) == 60
    assert len({item["id"] for item in items}) == 60
    assert media_types == {"photo", "video", "animated_gif"}
    assert '<script>alert("post")</script>' in texts
    assert "東京の夜景がきれい 🌃 #東京" in texts
    assert "غروب الشمس على البحر 🌅 #غروب" in texts
    assert all(
        item["url"].startswith("https://x.com/sandbox_owner/status/") for item in items
    )
    assert all(item["created_at"].endswith("+00:00") for item in items)
    assert all(not re.search(r"https://t\.co/", text) for text in texts)
    assert (
        "Reading list for the weekend 📚 https://example.com/articles?id=1&lang=en"
        in texts
    )


def test_timeline_media_urls_serve_images(live):
    auth = live.bearer()
    page = live.client.get_timeline(auth, OWNER_ID, max_results=5)
    media = [m for item in page.items for m in item["media"]]
    response = requests.get(media[0]["url"], timeout=10)
    profile = requests.get(page.items[0]["author"]["profile_image_url"], timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "image/jpeg"
    assert profile.status_code == 200


def test_timeline_exclude_replies_and_retweets(live):
    auth = live.bearer()
    every = live.client.get_timeline(auth, OWNER_ID, max_results=100).items
    kept = live.client.get_timeline(
        auth, OWNER_ID, max_results=100, exclude="replies,retweets"
    ).items
    assert len(every) == 60
    assert len(kept) == 58
    assert not any(item["text"].startswith(("RT @", "@")) for item in kept)


def test_fields_not_asked_gives_defaults(live):
    token = live.client.fetch_app_bearer(CREDS["api_key"], CREDS["api_secret"])
    response = raw_get(live, f"/2/users/{OWNER_ID}/tweets", BearerAuth(token))
    body = response.json()
    assert response.status_code == 200
    assert set(body["data"][0]) == {"id", "text", "edit_history_tweet_ids"}
    assert "includes" not in body
    assert body["meta"]["result_count"] == 10


def test_fields_unknown_rejected(live):
    token = live.client.fetch_app_bearer(CREDS["api_key"], CREDS["api_secret"])
    response = raw_get(
        live,
        f"/2/users/{OWNER_ID}/tweets",
        BearerAuth(token),
        **{"tweet.fields": "bogus"},
    )
    body = response.json()
    assert response.status_code == 400
    assert body["type"] == "https://api.x.com/2/problems/invalid-request"
    assert response.headers["Content-Type"].startswith("application/problem+json")


def test_text_sent_html_escaped(live):
    token = live.client.fetch_app_bearer(CREDS["api_key"], CREDS["api_secret"])
    response = raw_get(
        live, "/2/tweets/search/recent", BearerAuth(token), query="script"
    )
    texts = [post["text"] for post in response.json()["data"]]
    assert '&lt;script&gt;alert("post")&lt;/script&gt;' in texts


def test_unknown_username_not_found(live):
    with pytest.raises(XNotFoundError):
        live.client.get_user_by_username(live.bearer(), "nobody_here")


def test_search_pages_with_next_token(live):
    auth = live.bearer()
    tokens = []

    def fetch(token, size):
        tokens.append(token)
        return live.client.search_recent(auth, "e", max_results=10, next_token=token)

    items = live.client.iter_pages(fetch, 35)
    every = live.client.search_recent(auth, "e").items
    assert len(items) == 35
    assert len(tokens) == 4
    assert tokens[0] is None
    assert all(tokens[1:])
    assert [item["id"] for item in items] == [item["id"] for item in every[:35]]
    assert all("e" in item["text"].lower() for item in items)


def test_search_from_operator_and_exclusion(live):
    auth = live.bearer()
    items = live.client.search_recent(auth, "from:cafe_lisboa -terrace").items
    assert items
    assert all(item["author"]["username"] == "cafe_lisboa" for item in items)
    assert not any("terrace" in item["text"].lower() for item in items)


# OAuth 1.0a ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("Ladies + Gentlemen", "Ladies + Gentlemen, it's 100% ~awesome~ (really!) 🎉"),
        (
            "it's 100% ~awesome~ (really!)",
            "Ladies + Gentlemen, it's 100% ~awesome~ (really!) 🎉",
        ),
        ("🎉", "Ladies + Gentlemen, it's 100% ~awesome~ (really!) 🎉"),
        ("東京の夜景", "東京の夜景がきれい 🌃 #東京"),
        ('"غروب الشمس"', "غروب الشمس على البحر 🌅 #غروب"),
        ("<script>", '<script>alert("post")</script>'),
        ("Café & crème", LISBON),
    ],
)
def test_oauth1_awkward_search_accepted(live, query, expected):
    items = live.client.search_recent(live.oauth1(), query).items
    assert expected in [item["text"] for item in items]


def test_oauth1_reads_me_and_likes(live):
    auth = live.oauth1()
    me = live.client.get_me(auth)
    liked = live.client.get_liked(auth, me["id"])
    authors = {item["author"]["username"] for item in liked.items}
    assert me["username"] == "sandbox_owner"
    assert len(liked.items) == 20
    assert "sandbox_owner" not in authors
    assert "<script>alert('liked')</script>" in [i["text"] for i in liked.items]


def test_oauth1_tampered_signature_code_32(live):
    with pytest.raises(XAuthError) as caught:
        live.client.search_recent(TamperedSignature(live.oauth1()), "it's 100%")
    assert caught.value.code == 32
    assert caught.value.status == 401


def test_oauth1_wrong_token_secret_code_32(live):
    auth = oauth1_auth(
        CREDS["api_key"], CREDS["api_secret"], CREDS["access_token"], "wrong-secret"
    )
    with pytest.raises(XAuthError) as caught:
        live.client.get_me(auth)
    assert caught.value.code == 32


def test_oauth1_unknown_token_code_89(live):
    auth = oauth1_auth(
        CREDS["api_key"], CREDS["api_secret"], "1-unknown", CREDS["access_token_secret"]
    )
    with pytest.raises(XAuthError) as caught:
        live.client.get_me(auth)
    assert caught.value.code == 89


def test_oauth1_clock_skew_code_135(live, clock):
    clock.advance(minutes=6)
    with pytest.raises(XAuthError) as caught:
        live.client.get_me(live.oauth1())
    assert caught.value.code == 135
    assert "server clock" in str(caught.value)


def test_oauth1_within_five_minutes_accepted(live, clock):
    clock.advance(minutes=4)
    assert live.client.get_me(live.oauth1())["id"] == OWNER_ID


def test_rfc5849_example_through_sandbox_checker(tmp_path):
    moment = datetime.fromtimestamp(137131201, UTC)
    app = make_app(
        tmp_path,
        Clock(moment),
        X_API_KEY="9djdj82h48djs9d2",
        X_API_SECRET="j49sk3j29djd",
        X_ACCESS_TOKEN="kkk9d7dh3k39sjv7",
        X_ACCESS_TOKEN_SECRET="dh893hdasih9",
    )
    header = (
        'OAuth realm="Example",oauth_consumer_key="9djdj82h48djs9d2",'
        'oauth_token="kkk9d7dh3k39sjv7",oauth_signature_method="HMAC-SHA1",'
        'oauth_timestamp="137131201",oauth_nonce="7d8f3e4a",oauth_signature="{}"'
    )
    context = app.test_request_context(
        "/request?b5=%3D%253D&a3=a&c%40=&a2=r%20b",
        base_url="http://example.com",
        method="POST",
        data="c2&a3=2+q",
        content_type="application/x-www-form-urlencoded",
    )
    with context:
        correct = quote("r6/TJjbCOr97/+UU0NsvSne7s5g=", safe="")
        sandbox_x_auth.verify_oauth1(header.format(correct), 137131201)
        misprint = quote("bYT5CMsGcbgUdFHObYMEfcx6bsw=", safe="")
        with pytest.raises(sandbox_x_auth.OAuth1Failure) as caught:
            sandbox_x_auth.verify_oauth1(header.format(misprint), 137131201)
    assert caught.value.code == 32


# OAuth 2.0 with PKCE ------------------------------------------------------------------


def test_authorize_page_shows_allow_and_deny(live):
    url = live.client.authorize_url(
        CREDS["client_id"], REDIRECT_URI, "state-1", challenge_of(VERIFIER)
    )
    page = requests.get(url, timeout=10)
    assert page.status_code == 200
    assert ">Allow</button>" in page.text
    assert ">Deny</button>" in page.text
    assert "like.read" in page.text
    assert "Sandbox" in page.text


def test_authorize_deny_sends_access_denied(live):
    response = press(live, "deny")
    query = parse_qs(urlsplit(response.headers["Location"]).query)
    assert query["error"] == ["access_denied"]
    assert query["state"] == ["state-1"]
    assert "code" not in query


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("code_challenge_method", "plain", "S256"),
        ("client_id", "unknown-client", "client_id"),
        ("scope", "tweet.read bogus.scope", "bogus.scope"),
        ("redirect_uri", "https://elsewhere.example/cb", "redirect_uri"),
        ("code_challenge", "short", "code_challenge"),
    ],
)
def test_authorize_bad_request_rejected(live, name, value, words):
    url = live.client.authorize_url(
        CREDS["client_id"], REDIRECT_URI, "state-1", challenge_of(VERIFIER)
    )
    query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    query[name] = value
    page = requests.get(url.split("?")[0], params=query, timeout=10)
    assert page.status_code == 400
    assert words in page.text
    assert ">Allow</button>" not in page.text


def test_pkce_code_exchange(live):
    token = connect(live)
    me = live.client.get_me(BearerAuth(token.access_token))
    liked = live.client.get_liked(BearerAuth(token.access_token), me["id"])
    assert token.expires_in == 7200
    assert token.refresh_token
    assert set(token.scopes) == {
        "tweet.read",
        "users.read",
        "like.read",
        "offline.access",
    }
    assert me["id"] == OWNER_ID
    assert len(liked.items) == 20


def test_pkce_wrong_verifier_rejected(live):
    code = get_code(live)
    with pytest.raises(XAuthError) as caught:
        live.client.exchange_code(
            CREDS["client_id"], CREDS["client_secret"], code, REDIRECT_URI, "w" * 50
        )
    assert caught.value.kind == "invalid_request"
    assert code not in str(caught.value)
    token = live.client.exchange_code(
        CREDS["client_id"], CREDS["client_secret"], code, REDIRECT_URI, VERIFIER
    )
    assert token.access_token


def test_pkce_code_single_use(live):
    code = get_code(live)
    arguments = (
        CREDS["client_id"],
        CREDS["client_secret"],
        code,
        REDIRECT_URI,
        VERIFIER,
    )
    live.client.exchange_code(*arguments)
    with pytest.raises(XAuthError):
        live.client.exchange_code(*arguments)


def test_pkce_code_expires_after_30_seconds(live, clock):
    code = get_code(live)
    clock.advance(seconds=31)
    with pytest.raises(XAuthError) as caught:
        live.client.exchange_code(
            CREDS["client_id"], CREDS["client_secret"], code, REDIRECT_URI, VERIFIER
        )
    assert caught.value.kind == "invalid_request"


def test_pkce_code_valid_at_29_seconds(live, clock):
    code = get_code(live)
    clock.advance(seconds=29)
    token = live.client.exchange_code(
        CREDS["client_id"], CREDS["client_secret"], code, REDIRECT_URI, VERIFIER
    )
    assert token.access_token


def test_pkce_redirect_uri_trailing_slash_rejected(live):
    code = get_code(live)
    with pytest.raises(XAuthError):
        live.client.exchange_code(
            CREDS["client_id"],
            CREDS["client_secret"],
            code,
            REDIRECT_URI + "/",
            VERIFIER,
        )


def test_confidential_client_needs_secret(live):
    code = get_code(live)
    with pytest.raises(XAuthError) as caught:
        live.client.exchange_code(
            CREDS["client_id"], None, code, REDIRECT_URI, VERIFIER
        )
    assert caught.value.kind == "unauthorized_client"
    assert caught.value.status == 401


def test_public_client_sends_client_id(start):
    live = start(SANDBOX_X_PUBLIC_CLIENT=True)
    code = get_code(live)
    token = live.client.exchange_code(
        CREDS["client_id"], None, code, REDIRECT_URI, VERIFIER
    )
    refreshed = live.client.refresh(CREDS["client_id"], None, token.refresh_token)
    assert refreshed.access_token


def test_refresh_rotation(live):
    token = connect(live)
    rotated = live.client.refresh(
        CREDS["client_id"], CREDS["client_secret"], token.refresh_token
    )
    with pytest.raises(XAuthError) as reused:
        live.client.refresh(
            CREDS["client_id"], CREDS["client_secret"], token.refresh_token
        )
    again = live.client.refresh(
        CREDS["client_id"], CREDS["client_secret"], rotated.refresh_token
    )
    assert rotated.refresh_token != token.refresh_token
    assert rotated.access_token != token.access_token
    assert reused.value.kind == "invalid_request"
    assert again.refresh_token not in (token.refresh_token, rotated.refresh_token)


def test_refresh_without_client_auth_rejected(live):
    token = connect(live)
    with pytest.raises(XAuthError) as caught:
        live.client.refresh(CREDS["client_id"], None, token.refresh_token)
    assert caught.value.kind == "unauthorized_client"


def test_user_token_expires_after_two_hours(live, clock):
    token = connect(live)
    clock.advance(hours=2, seconds=1)
    with pytest.raises(XAuthError) as caught:
        live.client.get_me(BearerAuth(token.access_token))
    assert caught.value.status == 401


def test_app_bearer_on_liked_names_keys(live):
    with pytest.raises(XAuthError) as caught:
        live.client.get_liked(live.bearer(), OWNER_ID)
    message = str(caught.value)
    assert caught.value.kind == "unsupported-authentication"
    assert caught.value.status == 403
    assert "X_ACCESS_TOKEN and X_ACCESS_TOKEN_SECRET" in message
    assert "/admin/generate/x" in message
    assert "X_CLIENT_ID" in message


def test_app_bearer_on_users_me_rejected(live):
    with pytest.raises(XAuthError) as caught:
        live.client.get_me(live.bearer())
    assert caught.value.kind == "unsupported-authentication"


def test_liked_of_another_user_forbidden(live):
    with pytest.raises(XAuthError):
        live.client.get_liked(live.oauth1(), "1800000000000000002")


# Rate limits --------------------------------------------------------------------------


def test_rate_limit_headers_on_every_response(live):
    token = live.client.fetch_app_bearer(CREDS["api_key"], CREDS["api_secret"])
    first = raw_get(live, f"/2/users/{OWNER_ID}/tweets", BearerAuth(token))
    second = raw_get(live, f"/2/users/{OWNER_ID}/tweets", BearerAuth(token))
    failed = raw_get(live, "/2/tweets/search/recent", BearerAuth(token))
    assert first.headers["x-rate-limit-limit"] == "900"
    assert first.headers["x-rate-limit-remaining"] == "899"
    assert second.headers["x-rate-limit-remaining"] == "898"
    assert int(first.headers["x-rate-limit-reset"]) > live.clock.unix()
    assert failed.status_code == 400
    assert failed.headers["x-rate-limit-remaining"] == "449"


def test_rate_limit_switch_blocks_until_reset(live, clock):
    auth = live.bearer()
    assert control(live, "toggle_rate_limit").status_code == 200
    with pytest.raises(XRateLimitedError) as caught:
        live.client.get_timeline(auth, OWNER_ID)
    assert caught.value.usage_capped is False
    assert caught.value.reset_at > clock.unix()

    sent = live.session.sent
    clock.advance(minutes=10)
    with pytest.raises(XRateLimitedError):
        live.client.get_timeline(auth, OWNER_ID)
    assert live.session.sent == sent

    control(live, "toggle_rate_limit")
    clock.advance(minutes=6)
    page = live.client.get_timeline(auth, OWNER_ID)
    assert live.session.sent == sent + 1
    assert page.items


def test_rate_limit_window_used_up(start, clock):
    live = start(SANDBOX_X_RATE_LIMIT=2)
    auth = live.bearer()
    live.client.get_timeline(auth, OWNER_ID)
    live.client.get_timeline(auth, OWNER_ID)
    sent = live.session.sent
    with pytest.raises(XRateLimitedError):
        live.client.get_timeline(auth, OWNER_ID)
    assert live.session.sent == sent
    clock.advance(minutes=15)
    assert live.client.get_timeline(auth, OWNER_ID).items


def test_usage_cap_switch(live):
    auth = live.bearer()
    control(live, "toggle_usage_cap")
    with pytest.raises(XRateLimitedError) as caught:
        live.client.search_recent(auth, "sunset")
    assert caught.value.usage_capped is True
    assert "monthly" in str(caught.value)


def test_switches_in_shared_state_file(live):
    control(live, "toggle_rate_limit")
    stored = json.loads((live.instance_path / "sandbox-state.json").read_text())
    assert stored["x"]["switches"]["rate_limit"] is True
    assert stored["x"]["switches"]["usage_cap"] is False
    control(live, "reset")
    stored = json.loads((live.instance_path / "sandbox-state.json").read_text())
    assert stored["x"]["switches"]["rate_limit"] is False


def test_state_file_shared_with_instagram_sandbox(tmp_path, clock):
    app = make_app(tmp_path, clock)
    with app.app_context():
        sandbox_state.apply_action("toggle_outage", clock())
        sandbox_x_auth.apply_action("toggle_usage_cap")
        sandbox_state.apply_action("toggle_rate_limit", clock())
        instagram = sandbox_state.read()
        x_state = sandbox_x_auth.read()
    assert instagram["switches"]["outage"] is True
    assert instagram["switches"]["rate_limit"] is True
    assert x_state["switches"]["usage_cap"] is True
    assert x_state["switches"]["rate_limit"] is False


def test_control_without_csrf_rejected(live):
    response = requests.post(
        f"{live.url}/sandbox/x/control", data={"action": "reset"}, timeout=10
    )
    assert response.status_code == 400


def test_control_unknown_action_rejected(live):
    assert control(live, "format_disk").status_code == 400


def test_panel_says_reset_time_kept(live):
    page = requests.get(f"{live.url}/sandbox/x/", timeout=10)
    note = re.search(r'<p id="reset-note">(.*?)</p>', page.text, re.DOTALL)
    assert note, "the panel has no note about the reset time"
    text = " ".join(note.group(1).split())
    assert "ownfeed waits until the reset time it already received" in text


def test_port_change_drops_saved_x_feeds(make_app):
    import services

    sandbox_app = make_app()
    folder = Path(sandbox_app.instance_path)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sandbox-url").write_text("http://127.0.0.1:5000\n", encoding="utf-8")
    saved = folder / "feed-x-timeline.json"
    saved.write_text('{"posts": []}', encoding="utf-8")
    instagram = folder / "feed-instagram.json"
    instagram.write_text('{"posts": []}', encoding="utf-8")

    with sandbox_app.test_request_context(base_url="http://127.0.0.1:5000/"):
        services.services().feeds["x-timeline"] = object()
        services._sandbox_server_url()
        kept_on_same_port = saved.exists()
    with sandbox_app.test_request_context(base_url="http://127.0.0.1:5055/"):
        url = services._sandbox_server_url()
        feeds = dict(services.services().feeds)

    assert kept_on_same_port
    assert url == "http://127.0.0.1:5055"
    assert not saved.exists()
    assert instagram.exists()
    assert "x-timeline" not in feeds
    assert (folder / "sandbox-url").read_text(encoding="utf-8").strip() == url


def test_new_port_request_drops_x_feeds(make_app):
    sandbox_app = make_app()
    folder = Path(sandbox_app.instance_path)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sandbox-url").write_text("http://127.0.0.1:5000\n", encoding="utf-8")
    saved = folder / "feed-x-timeline.json"
    saved.write_text('{"posts": []}', encoding="utf-8")

    sandbox_app.test_client().get("/healthz", base_url="http://127.0.0.1:5055")

    assert not saved.exists()
