"""Tests for the sandbox blueprint, run against a minimal Flask app."""

from __future__ import annotations

import io
import json
import re
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from flask import Blueprint, Flask
from PIL import Image
from werkzeug.serving import make_server

import sandbox
from extensions import csrf
from sandbox_data import sandbox_posts

ROOT = Path(__file__).resolve().parents[1]
REDIRECT_URI = "http://localhost/admin/callback/instagram"
SECRET_KEY = "test-secret-key"
CLIENT_ID, CLIENT_SECRET = sandbox.credentials(SECRET_KEY)
START = datetime(2026, 7, 1, 12, 0, tzinfo=UTC)
GRAPH = "/sandbox/graph"
ALL_MEDIA_FIELDS = (
    "id,caption,media_type,media_url,permalink,thumbnail_url,timestamp,username,"
    "children{id,media_type,media_url,thumbnail_url}"
)


class Clock:
    """A settable clock for the `ownfeed_clock` extension."""

    def __init__(self, moment: datetime) -> None:
        self.moment = moment

    def __call__(self) -> datetime:
        return self.moment

    def advance(self, **delta: float) -> None:
        self.moment += timedelta(**delta)


def make_app(instance_path: Path, clock: Clock, **config: object) -> Flask:
    """Build the smallest app that serves the sandbox like ownfeed's factory does."""
    app = Flask("sandbox_test", root_path=str(ROOT), instance_path=str(instance_path))
    app.config.update(
        SECRET_KEY=SECRET_KEY,
        INSTAGRAM_CLIENT_ID=CLIENT_ID,
        INSTAGRAM_CLIENT_SECRET=CLIENT_SECRET,
        OWNFEED_SANDBOX=True,
    )
    app.config.update(config)
    csrf.init_app(app)
    # base.html links to these admin pages.
    admin = Blueprint("admin", __name__, url_prefix="/admin")
    for name in ("generate", "summary", "logout"):
        admin.add_url_rule(f"/{name}", name, lambda: "admin stub")
    app.register_blueprint(admin)
    app.register_blueprint(sandbox.bp)
    app.extensions["ownfeed_clock"] = clock
    return app


@pytest.fixture
def clock() -> Clock:
    return Clock(START)


@pytest.fixture
def app(tmp_path: Path, clock: Clock) -> Flask:
    return make_app(tmp_path, clock)


@pytest.fixture
def client(app: Flask):
    return app.test_client()


def csrf_token_from(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "the page has no csrf_token field"
    return match.group(1)


def authorize_query(**overrides: str) -> dict[str, str]:
    query = {
        "client_id": CLIENT_ID,
        "redirect_uri": REDIRECT_URI,
        "response_type": "code",
        "scope": "instagram_business_basic",
        "state": "state-123",
    }
    query.update(overrides)
    return {name: value for name, value in query.items() if value is not None}


def decide(client, decision: str, **overrides: str):
    """Open the authorize page and press Allow or Deny."""
    query = authorize_query(**overrides)
    page = client.get("/sandbox/oauth/authorize", query_string=query)
    assert page.status_code == 200
    form = dict(query, csrf_token=csrf_token_from(page.text), decision=decision)
    return client.post("/sandbox/oauth/authorize", data=form)


def get_code(client, **overrides: str) -> str:
    response = decide(client, "allow", **overrides)
    location = response.headers["Location"]
    return parse_qs(urlsplit(location.removesuffix("#_")).query)["code"][0]


def exchange(client, code: str, **overrides: str):
    form = {
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "grant_type": "authorization_code",
        "redirect_uri": REDIRECT_URI,
        "code": code,
    }
    form.update(overrides)
    return client.post("/sandbox/oauth/access_token", data=form)


def short_token(client) -> str:
    return exchange(client, get_code(client)).get_json()["access_token"]


def long_token(client) -> str:
    query = {
        "grant_type": "ig_exchange_token",
        "client_secret": CLIENT_SECRET,
        "access_token": short_token(client),
    }
    return client.get(f"{GRAPH}/access_token", query_string=query).get_json()[
        "access_token"
    ]


def refresh(client, token: str):
    query = {"grant_type": "ig_refresh_token", "access_token": token}
    return client.get(f"{GRAPH}/refresh_access_token", query_string=query)


def get_me(client, token: str, fields: str | None = None):
    query = {"access_token": token}
    if fields is not None:
        query["fields"] = fields
    return client.get(f"{GRAPH}/v25.0/me", query_string=query)


def all_media(client, token: str, fields: str = ALL_MEDIA_FIELDS) -> list[dict]:
    """Follow `next` from the first page to the last, as the client does."""
    query = {"access_token": token, "fields": fields, "limit": "100"}
    response = client.get(f"{GRAPH}/v25.0/me/media", query_string=query)
    items = []
    while True:
        assert response.status_code == 200
        body = response.get_json()
        items.extend(body["data"])
        next_url = body.get("paging", {}).get("next")
        if not next_url:
            return items
        response = client.get(next_url)


def graph_error(response) -> dict:
    return response.get_json()["error"]


def control(client, action: str):
    page = client.get("/sandbox/")
    form = {"csrf_token": csrf_token_from(page.text), "action": action}
    return client.post("/sandbox/control", data=form)


# Authorize page -------------------------------------------------------------------


def test_authorize_page_shows_allow_and_deny(client):
    response = client.get("/sandbox/oauth/authorize", query_string=authorize_query())
    assert response.status_code == 200
    assert ">Allow</button>" in response.text
    assert ">Deny</button>" in response.text
    assert "@sandbox.owner" in response.text
    assert "instagram_business_basic" in response.text
    assert "Sandbox" in response.text


def test_authorize_unknown_client_rejected(client):
    query = authorize_query(client_id="123")
    response = client.get("/sandbox/oauth/authorize", query_string=query)
    assert response.status_code == 400
    assert "Invalid platform app" in response.text
    assert ">Allow</button>" not in response.text


@pytest.mark.parametrize(
    "redirect_uri",
    [
        None,
        "ftp://localhost/callback",
        "/admin/callback/instagram",
        "http://localhost/callback#fragment",
        "https://attacker.example/callback",
    ],
)
def test_authorize_bad_redirect_uri_rejected(client, redirect_uri):
    query = authorize_query(redirect_uri=redirect_uri)
    response = client.get("/sandbox/oauth/authorize", query_string=query)
    assert response.status_code == 400
    assert "Invalid redirect_uri" in response.text


def test_authorize_configured_redirect_uri_accepted(tmp_path, clock):
    uri = "https://site.example/admin/callback/instagram"
    client = make_app(tmp_path, clock, INSTAGRAM_REDIRECT_URI=uri).test_client()
    response = client.get(
        "/sandbox/oauth/authorize", query_string=authorize_query(redirect_uri=uri)
    )
    assert response.status_code == 200


def test_authorize_basic_display_scopes_rejected(client):
    query = authorize_query(scope="user_profile,user_media")
    response = client.get("/sandbox/oauth/authorize", query_string=query)
    assert response.status_code == 400
    assert "Invalid Scopes: user_profile, user_media" in response.text


def test_authorize_wrong_response_type_rejected(client):
    query = authorize_query(response_type="token")
    response = client.get("/sandbox/oauth/authorize", query_string=query)
    assert response.status_code == 400
    assert "Invalid response_type" in response.text


def test_authorize_allow_redirects_with_code(client):
    response = decide(client, "allow")
    location = response.headers["Location"]
    assert response.status_code in (302, 303)
    assert location.startswith(REDIRECT_URI + "?code=")
    assert location.endswith("&state=state-123#_")


def test_authorize_allow_keeps_existing_query(client):
    response = decide(client, "allow", redirect_uri="http://localhost/cb?source=x")
    assert response.headers["Location"].startswith("http://localhost/cb?source=x&code=")


def test_authorize_without_state_omits_it(client):
    response = decide(client, "allow", state=None)
    assert "state=" not in response.headers["Location"]


def test_authorize_deny_redirects_with_error(client):
    response = decide(client, "deny")
    assert response.status_code in (302, 303)
    assert response.headers["Location"] == (
        REDIRECT_URI + "?error=access_denied&error_reason=user_denied"
        "&error_description=The+user+denied+your+request.&state=state-123"
    )


def test_authorize_post_without_csrf_rejected(client):
    form = dict(authorize_query(), decision="allow")
    response = client.post("/sandbox/oauth/authorize", data=form)
    assert response.status_code == 400
    assert "Location" not in response.headers


# Code exchange ------------------------------------------------------------------


def test_exchange_flat_shape(client):
    response = exchange(client, get_code(client))
    body = response.get_json()
    assert response.status_code == 200
    assert body["access_token"].startswith("IGAA")
    assert body["user_id"] == 27640875392278831
    assert body["permissions"] == ["instagram_business_basic"]


def test_exchange_documented_shape(tmp_path, clock):
    app = make_app(tmp_path, clock, SANDBOX_TOKEN_RESPONSE="documented")
    client = app.test_client()
    body = exchange(client, get_code(client)).get_json()
    record = body["data"][0]
    assert list(body) == ["data"]
    assert record["access_token"].startswith("IGAA")
    assert record["user_id"] == "27640875392278831"
    assert record["permissions"] == "instagram_business_basic"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"client_id": "999"}, "Invalid platform app"),
        ({"client_secret": "0" * 32}, "Error validating client secret."),
        (
            {"redirect_uri": REDIRECT_URI + "/"},
            "Error validating verification code. Please make sure your redirect_uri "
            "is identical to the one you used in the OAuth dialog request",
        ),
        (
            {"code": "AQnot-a-real-code"},
            "Matching code was not found or was already used",
        ),
    ],
)
def test_exchange_error_messages(client, overrides, message):
    response = exchange(client, **{"code": get_code(client), **overrides})
    assert response.status_code == 400
    assert response.get_json() == {
        "error_type": "OAuthException",
        "code": 400,
        "error_message": message,
    }


def test_exchange_code_with_fragment_not_found(client):
    response = exchange(client, get_code(client) + "#_")
    expected = "Matching code was not found or was already used"
    assert response.get_json()["error_message"] == expected


def test_exchange_code_single_use(client):
    code = get_code(client)
    first = exchange(client, code)
    second = exchange(client, code)
    assert first.status_code == 200
    assert second.status_code == 400
    expected = "Matching code was not found or was already used"
    assert second.get_json()["error_message"] == expected


def test_exchange_mismatch_leaves_code_unused(client):
    code = get_code(client)
    exchange(client, code, redirect_uri=REDIRECT_URI + "?x=1")
    assert exchange(client, code).status_code == 200


def test_exchange_code_expires_after_one_hour(client, clock):
    code = get_code(client)
    clock.advance(hours=1, seconds=1)
    response = exchange(client, code)
    expected = "Matching code was not found or was already used"
    assert response.get_json()["error_message"] == expected


def test_exchange_used_codes_pruned_after_expiry(client, clock, app):
    exchange(client, get_code(client))
    clock.advance(hours=2)
    exchange(client, get_code(client))
    state = json.loads((Path(app.instance_path) / "sandbox-state.json").read_text())
    assert len(state["used_codes"]) == 1


def test_short_token_expires_after_one_hour(client, clock):
    token = short_token(client)
    clock.advance(hours=1, seconds=1)
    error = graph_error(get_me(client, token))
    assert error["code"] == 190
    assert error["error_subcode"] == 463


# Long-lived tokens and refresh -----------------------------------------------------


def test_long_lived_exchange_shape(client):
    short = short_token(client)
    query = {
        "grant_type": "ig_exchange_token",
        "client_secret": CLIENT_SECRET,
        "access_token": short,
    }
    body = client.get(f"{GRAPH}/access_token", query_string=query).get_json()
    assert set(body) == {"access_token", "token_type", "expires_in"}
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 5183944
    assert body["access_token"] != short


def test_long_lived_exchange_wrong_secret_rejected(client):
    query = {
        "grant_type": "ig_exchange_token",
        "client_secret": "wrong",
        "access_token": short_token(client),
    }
    response = client.get(f"{GRAPH}/access_token", query_string=query)
    assert response.status_code == 400
    assert graph_error(response)["message"] == "Error validating client secret."


def test_refresh_too_young_rejected(client, clock):
    token = long_token(client)
    clock.advance(hours=23)
    response = refresh(client, token)
    error = graph_error(response)
    assert response.status_code == 400
    assert error["type"] == "OAuthException"
    assert error["code"] == 100
    assert "24 hours" in error["message"]


def test_refresh_after_a_day_returns_new_token(client, clock):
    token = long_token(client)
    clock.advance(hours=25)
    response = refresh(client, token)
    body = response.get_json()
    assert response.status_code == 200
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 5183944
    assert body["access_token"] != token
    assert get_me(client, body["access_token"]).status_code == 200


def test_refresh_new_token_lasts_sixty_days(client, clock):
    token = long_token(client)
    clock.advance(days=30)
    new_token = refresh(client, token).get_json()["access_token"]
    clock.advance(days=40)
    assert get_me(client, token).status_code == 400
    assert get_me(client, new_token).status_code == 200


def test_long_lived_token_expires_after_sixty_days(client, clock):
    token = long_token(client)
    clock.advance(seconds=5183944)
    error = graph_error(get_me(client, token))
    assert error["code"] == 190
    assert error["error_subcode"] == 463
    assert error["message"].startswith("Error validating access token: Session has")


def test_refresh_expired_token_rejected(client, clock):
    token = long_token(client)
    clock.advance(days=61)
    error = graph_error(refresh(client, token))
    assert error["code"] == 190
    assert error["error_subcode"] == 463


# Profile --------------------------------------------------------------------------


def test_me_returns_requested_fields(client):
    fields = "user_id,username,name,account_type,profile_picture_url,media_count"
    body = get_me(client, short_token(client), fields).get_json()
    assert set(body) == set(fields.split(",")) | {"id"}
    assert body["user_id"] == "17841400000000001"
    assert body["id"] == "27640875392278831"
    assert body["username"] == "sandbox.owner"
    assert body["account_type"] == "BUSINESS"
    assert body["media_count"] == 150


def test_me_without_fields_returns_only_id(client):
    body = get_me(client, short_token(client)).get_json()
    assert body == {"id": "27640875392278831"}


def test_me_profile_picture_is_served(client):
    body = get_me(client, short_token(client), "profile_picture_url").get_json()
    response = client.get(body["profile_picture_url"])
    assert response.status_code == 200
    assert response.content_type == "image/jpeg"


def test_me_bearer_header_accepted(client):
    headers = {"Authorization": f"Bearer {short_token(client)}"}
    response = client.get(f"{GRAPH}/v25.0/me", headers=headers)
    assert response.status_code == 200


@pytest.mark.parametrize("token", [None, "", "IGAAgarbage", "EAAB" + "x" * 80])
def test_unparseable_token_rejected(client, token):
    query = {} if token is None else {"access_token": token}
    response = client.get(f"{GRAPH}/v25.0/me", query_string=query)
    error = graph_error(response)
    assert response.status_code == 400
    assert error["code"] == 190
    assert error["message"] == "Invalid OAuth access token - Cannot parse access token"
    assert "error_subcode" not in error
    assert error["fbtrace_id"]


def test_token_signed_with_other_key_rejected(client, tmp_path, clock):
    other = make_app(tmp_path / "other", clock, SECRET_KEY="another-key")
    other_client = other.test_client()
    other_secret = sandbox.credentials("another-key")[1]
    other.config["INSTAGRAM_CLIENT_SECRET"] = other_secret
    foreign = exchange(
        other_client, get_code(other_client), client_secret=other_secret
    ).get_json()["access_token"]
    assert graph_error(get_me(client, foreign))["code"] == 190


def test_unknown_field_rejected(client):
    error = graph_error(get_me(client, short_token(client), "id,password"))
    assert error["code"] == 100
    assert "nonexisting field (password)" in error["message"]


def test_malformed_fields_rejected(client):
    query = {"access_token": short_token(client), "fields": "id,children{id"}
    response = client.get(f"{GRAPH}/v25.0/me/media", query_string=query)
    assert graph_error(response)["code"] == 100


def test_unknown_api_version_rejected(client):
    query = {"access_token": short_token(client)}
    response = client.get(f"{GRAPH}/latest/me", query_string=query)
    assert graph_error(response)["code"] == 2500


# Media ----------------------------------------------------------------------------


def test_media_default_page_is_25_ids(client):
    query = {"access_token": short_token(client)}
    body = client.get(f"{GRAPH}/v25.0/me/media", query_string=query).get_json()
    assert len(body["data"]) == 25
    assert all(set(item) == {"id"} for item in body["data"])
    assert "limit=25" in body["paging"]["next"]


def test_media_limit_100_pages_until_no_next(client):
    token = short_token(client)
    query = {"access_token": token, "fields": "id,caption", "limit": "100"}
    first = client.get(f"{GRAPH}/v25.0/me/media", query_string=query).get_json()
    next_query = parse_qs(urlsplit(first["paging"]["next"]).query)
    second = client.get(first["paging"]["next"]).get_json()
    assert len(first["data"]) == 100
    assert next_query["fields"] == ["id,caption"]
    assert next_query["limit"] == ["100"]
    assert next_query["access_token"] == [token]
    assert next_query["after"] == [first["paging"]["cursors"]["after"]]
    assert first["paging"]["next"].startswith("http://localhost/sandbox/graph/v25.0/")
    assert len(second["data"]) == 50
    assert "next" not in second["paging"]
    assert "previous" in second["paging"]


def test_media_previous_link_returns_earlier_page(client):
    query = {"access_token": short_token(client), "limit": "10"}
    first = client.get(f"{GRAPH}/v25.0/me/media", query_string=query).get_json()
    second = client.get(first["paging"]["next"]).get_json()
    back = client.get(second["paging"]["previous"]).get_json()
    assert "previous" not in first["paging"]
    assert back["data"] == first["data"]


def test_media_limit_capped_at_100(client):
    query = {"access_token": short_token(client), "limit": "500"}
    body = client.get(f"{GRAPH}/v25.0/me/media", query_string=query).get_json()
    assert len(body["data"]) == 100


@pytest.mark.parametrize("limit", ["0", "-3", "ten"])
def test_media_bad_limit_rejected(client, limit):
    query = {"access_token": short_token(client), "limit": limit}
    response = client.get(f"{GRAPH}/v25.0/me/media", query_string=query)
    assert graph_error(response)["code"] == 100


def test_media_bad_cursor_rejected(client):
    query = {"access_token": short_token(client), "after": "bm9wZQ"}
    response = client.get(f"{GRAPH}/v25.0/me/media", query_string=query)
    assert graph_error(response)["code"] == 100


def test_media_posts_unique_newest_first(client):
    items = all_media(client, short_token(client))
    timestamps = [item["timestamp"] for item in items]
    assert len(items) == 150
    assert len({item["id"] for item in items}) == 150
    assert all(
        re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+0000", t) for t in timestamps
    )
    assert timestamps == sorted(timestamps, reverse=True)
    assert timestamps[0] == "2026-06-22T10:45:00+0000"


def test_media_lighthouse_post_is_last(client):
    items = all_media(client, short_token(client))
    captions = [item.get("caption", "") for item in items]
    assert "lighthouse" in captions[-1]
    assert "#farshore" in captions[-1]
    assert sum("lighthouse" in caption for caption in captions) == 1


def test_media_children_expansion(client):
    items = all_media(client, short_token(client))
    albums = [item for item in items if item["media_type"] == "CAROUSEL_ALBUM"]
    children = [child for album in albums for child in album["children"]["data"]]
    assert albums
    assert all(2 <= len(album["children"]["data"]) <= 4 for album in albums)
    assert {child["media_type"] for child in children} == {"IMAGE", "VIDEO"}
    assert all("permalink" not in child for child in children)
    assert all(
        set(child) <= {"id", "media_type", "media_url", "thumbnail_url"}
        for child in children
    )
    assert not any("children" in item for item in items if item not in albums)


def test_media_mix_matches_instagram_quirks(client):
    items = all_media(client, short_token(client))
    videos = [item for item in items if item["media_type"] == "VIDEO"]
    images = [item for item in items if item["media_type"] == "IMAGE"]
    assert all("thumbnail_url" in video for video in videos)
    assert not any("thumbnail_url" in image for image in images)
    assert any("caption" not in item for item in items)
    assert sum("media_url" not in video for video in videos) == 1
    assert sum("media_url" not in image for image in images) == 1
    assert all(
        item["permalink"].startswith("https://www.instagram.com/p/") for item in items
    )
    assert all(item["username"] == "sandbox.owner" for item in items)


@pytest.mark.parametrize(
    "text",
    [
        "#sunset",
        "#sun",
        "#Café",
        "crème brûlée",
        "غروب",
        "בוקר",
        "東京",
        "火锅",
        '<script>alert("caption")</script>',
        '"><img src=x onerror=alert(1)>',
        "🌅",
    ],
)
def test_media_captions_include(client, text):
    items = all_media(client, short_token(client), "id,caption")
    assert any(text in item.get("caption", "") for item in items)


def test_media_json_ascii_escaped_slashes(client):
    query = {"access_token": short_token(client), "fields": "caption,permalink"}
    response = client.get(f"{GRAPH}/v25.0/me/media", query_string=query)
    assert response.data.isascii()
    assert b"https:\\/\\/www.instagram.com\\/p\\/" in response.data


def test_media_node_and_children_routes(client):
    token = short_token(client)
    items = all_media(client, token)
    album = next(item for item in items if item["media_type"] == "CAROUSEL_ALBUM")
    node = client.get(
        f"{GRAPH}/v25.0/{album['id']}",
        query_string={"access_token": token, "fields": "id,media_type,permalink"},
    ).get_json()
    children = client.get(
        f"{GRAPH}/v25.0/{album['id']}/children",
        query_string={"access_token": token, "fields": "id,media_type,media_url"},
    ).get_json()
    assert node == {
        "id": album["id"],
        "media_type": "CAROUSEL_ALBUM",
        "permalink": album["permalink"],
    }
    assert [child["id"] for child in children["data"]] == [
        child["id"] for child in album["children"]["data"]
    ]


def test_media_unknown_id_rejected(client):
    query = {"access_token": short_token(client)}
    response = client.get(f"{GRAPH}/v25.0/17900000000000000", query_string=query)
    error = graph_error(response)
    assert error["code"] == 100
    assert error["error_subcode"] == 33
    assert "Object with ID '17900000000000000' does not exist" in error["message"]


def test_sandbox_posts_ids_and_order():
    posts = sandbox_posts(150)
    assert len(posts) == 150
    assert all(re.fullmatch(r"\d{17}", post["id"]) for post in posts)
    assert "lighthouse" in posts[-1]["caption"]


def test_sandbox_posts_small_count_lighthouse_last():
    posts = sandbox_posts(3)
    assert len(posts) == 3
    assert "lighthouse" in posts[-1]["caption"]


# CDN ------------------------------------------------------------------------------


def media_urls(client, token: str) -> list[str]:
    items = all_media(client, token)
    images = [item for item in items if item["media_type"] == "IMAGE"]
    return [item["media_url"] for item in images if "media_url" in item]


def test_cdn_serves_jpeg_in_three_shapes(client):
    sizes = set()
    for url in media_urls(client, short_token(client))[:6]:
        response = client.get(url)
        assert response.status_code == 200
        assert response.content_type == "image/jpeg"
        sizes.add(Image.open(io.BytesIO(response.data)).size)
    assert sizes == {(1080, 1080), (1080, 1350), (1080, 566)}


def test_cdn_same_id_gives_same_bytes(client):
    url = media_urls(client, short_token(client))[0]
    assert client.get(url).data == client.get(url).data


def test_cdn_url_expires_after_five_days(client, clock):
    url = media_urls(client, short_token(client))[0]
    clock.advance(days=4, hours=23)
    fresh = client.get(url)
    clock.advance(hours=1)
    expired = client.get(url)
    assert fresh.status_code == 200
    assert expired.status_code == 403
    assert expired.text == "URL signature expired"


def test_cdn_bad_signature_rejected(client):
    url = media_urls(client, short_token(client))[0]
    response = client.get(re.sub(r"oh=[0-9a-f]+", "oh=" + "0" * 32, url))
    assert response.status_code == 403
    assert response.text == "URL signature expired"


def test_cdn_video_file_is_404(client):
    items = all_media(client, short_token(client))
    video = next(
        item for item in items if item["media_type"] == "VIDEO" and "media_url" in item
    )
    response = client.get(video["media_url"])
    cover = client.get(video["thumbnail_url"])
    assert urlsplit(video["media_url"]).path.endswith(".mp4")
    assert response.status_code == 404
    assert "use the cover image (thumbnail_url)" in response.text
    assert cover.status_code == 200


# Control panel ------------------------------------------------------------------


def test_index_shows_sandbox_is_active(client):
    response = client.get("/sandbox/")
    assert response.status_code == 200
    assert "The sandbox is active" in response.text
    assert "Refresh fails" in response.text
    assert response.text.count('name="action"') == 7


@pytest.mark.parametrize(
    ("action", "subcode"),
    [("expire_tokens", 463), ("invalidate_password", 460), ("revoke_access", 458)],
)
def test_control_invalidates_earlier_tokens(client, action, subcode):
    old = short_token(client)
    response = control(client, action)
    new = short_token(client)
    error = graph_error(get_me(client, old))
    assert response.status_code == 303
    assert response.headers["Location"].endswith("/sandbox/")
    assert error["code"] == 190
    assert error["error_subcode"] == subcode
    assert get_me(client, new).status_code == 200


def test_control_refresh_failure_toggles(client, clock):
    token = long_token(client)
    clock.advance(hours=25)
    control(client, "toggle_refresh_failure")
    failing = refresh(client, token)
    control(client, "toggle_refresh_failure")
    working = refresh(client, token)
    assert failing.status_code == 500
    assert graph_error(failing)["code"] == 2
    assert graph_error(failing)["message"] == (
        "An unexpected error has occurred. Please retry your request later."
    )
    assert working.status_code == 200


def test_control_rate_limit(client):
    token = short_token(client)
    control(client, "toggle_rate_limit")
    response = get_me(client, token)
    usage = json.loads(response.headers["X-Business-Use-Case-Usage"])
    entry = usage["17841400000000001"][0]
    assert graph_error(response)["code"] == 4
    assert graph_error(response)["message"] == "Application request limit reached"
    assert entry["estimated_time_to_regain_access"] > 0


def test_control_outage(client):
    token = short_token(client)
    code = get_code(client)
    control(client, "toggle_outage")
    graph = get_me(client, token)
    token_exchange = exchange(client, code)
    assert graph.status_code == 503
    assert graph.content_type.startswith("text/html")
    assert token_exchange.status_code == 503


def test_control_reset(client):
    token = short_token(client)
    control(client, "revoke_access")
    control(client, "toggle_rate_limit")
    control(client, "reset")
    page = client.get("/sandbox/")
    assert get_me(client, token).status_code == 200
    assert "None: every token is valid" in page.text


def test_control_unknown_action_rejected(client):
    assert control(client, "explode").status_code == 400


def test_control_without_csrf_rejected(client):
    response = client.post("/sandbox/control", data={"action": "toggle_outage"})
    assert response.status_code == 400


# Shared state ---------------------------------------------------------------------


def test_state_shared_between_workers(tmp_path, clock):
    first = make_app(tmp_path, clock).test_client()
    second = make_app(tmp_path, clock).test_client()
    code = get_code(first)
    exchanged = exchange(second, code)
    reused = exchange(first, code)
    control(first, "toggle_rate_limit")
    limited = get_me(second, exchanged.get_json()["access_token"])
    assert exchanged.status_code == 200
    assert reused.status_code == 400
    assert graph_error(limited)["code"] == 4


def test_corrupt_state_file_moved_aside(app, client):
    path = Path(app.instance_path) / "sandbox-state.json"
    path.write_text("{not json")
    response = client.get("/sandbox/")
    assert response.status_code == 200
    assert list(path.parent.glob("sandbox-state.json.corrupt-*"))


# Module functions ---------------------------------------------------------------


def test_credentials_derived_from_secret_key():
    client_id, secret = sandbox.credentials("one")
    assert client_id.isdigit()
    assert sandbox.credentials("one") == (client_id, secret)
    assert sandbox.credentials("two")[1] != secret
    assert re.fullmatch(r"[0-9a-f]{32}", secret)


def test_endpoints_point_at_sandbox():
    pytest.importorskip("instagram")
    result = sandbox.endpoints("http://127.0.0.1:5000/", "v25.0")
    assert result.authorize_url == "http://127.0.0.1:5000/sandbox/oauth/authorize"
    assert result.token_url == "http://127.0.0.1:5000/sandbox/oauth/access_token"
    assert result.graph_url == "http://127.0.0.1:5000/sandbox/graph"
    assert result.api_version == "v25.0"


# The real client over HTTP ----------------------------------------------------------


@pytest.fixture
def live_url(app):
    """Serve the test app on a loopback port from a thread, for the real client."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join()
    server.server_close()


def test_real_client_runs_against_sandbox(live_url, clock):
    instagram = pytest.importorskip("instagram")
    redirect_uri = f"{live_url}/admin/callback/instagram"
    with requests.Session() as browser, requests.Session() as session:
        api = instagram.InstagramClient(
            sandbox.endpoints(live_url, "v25.0"),
            CLIENT_ID,
            CLIENT_SECRET,
            session=session,
        )
        page = browser.get(api.authorize_url(redirect_uri, "state-1"), timeout=10)
        query = parse_qs(urlsplit(page.url).query)
        form = {name: values[0] for name, values in query.items()}
        form.update(csrf_token=csrf_token_from(page.text), decision="allow")
        allowed = browser.post(
            f"{live_url}/sandbox/oauth/authorize",
            data=form,
            allow_redirects=False,
            timeout=10,
        )
        code = parse_qs(urlsplit(allowed.headers["Location"]).query)["code"][0]

        short = api.exchange_code(code + "#_", redirect_uri)
        long = api.exchange_long_lived(short.access_token)
        profile = api.get_profile(long.access_token)
        media = api.iter_media(long.access_token, 500)
        clock.advance(hours=25)
        refreshed = api.refresh(long.access_token)

    assert short.user_id == "27640875392278831"
    assert long.expires_in == 5183944
    assert profile["user_id"] == "17841400000000001"
    assert profile["username"] == "sandbox.owner"
    assert len(media) == 150
    assert "lighthouse" in media[-1]["caption"]
    assert refreshed.access_token != long.access_token
