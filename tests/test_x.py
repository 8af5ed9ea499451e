"""Unit tests for the X client, against requests_mock responses."""

from __future__ import annotations

import base64
import logging
from typing import Any
from urllib.parse import parse_qs, parse_qsl, unquote, urlsplit

import pytest
import requests
from oauthlib.common import Request as OAuthRequest
from oauthlib.oauth1.rfc5849 import utils as oauth_utils

from x import (
    READ_PARAMS,
    BearerAuth,
    XAuthError,
    XClient,
    XEndpoints,
    XError,
    XNotFoundError,
    XPage,
    XRateLimitedError,
    XUnavailableError,
    oauth1_auth,
)

API = "https://api.x.com"
TOKEN_URL = f"{API}/2/oauth2/token"
TIMELINE_URL = f"{API}/2/users/42/tweets"
SEARCH_URL = f"{API}/2/tweets/search/recent"
LIKED_URL = f"{API}/2/users/42/liked_tweets"
ME_URL = f"{API}/2/users/me"
BEARER = "AAAAAAAAAAAAAAAAAAAAAbearer-3f9c1e"
CLIENT_ID = "client-id-8d2e"
CLIENT_SECRET = "client-secret-5b7a"
CODE = "code-value-91c3"
VERIFIER = "verifier-" + "v" * 40
REFRESH_TOKEN = "refresh-token-77aa"
START = 1_800_000_000.0
PROBLEMS = "https://api.x.com/2/problems/"


class Clock:
    """A settable Unix-seconds clock for the client's rate-limit memory."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def client(clock: Clock) -> XClient:
    return XClient(XEndpoints(), clock=clock)


@pytest.fixture
def bearer() -> BearerAuth:
    return BearerAuth(BEARER)


def sent_query(request: Any) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(request.url).query))


def sent_form(request: Any) -> dict[str, str]:
    return dict(parse_qsl(request.text))


def basic_pair(request: Any) -> tuple[str, str]:
    scheme, _, value = request.headers["Authorization"].partition(" ")
    assert scheme == "Basic"
    user, _, password = base64.b64decode(value).decode().partition(":")
    return user, password


def post(post_id: str, **fields: Any) -> dict[str, Any]:
    return {"id": post_id, "text": f"post {post_id}", "author_id": "42", **fields}


def timeline_body(posts: list[dict], next_token: str | None = None, **extra) -> dict:
    meta: dict[str, Any] = {"result_count": len(posts)}
    if next_token:
        meta["next_token"] = next_token
    return {"data": posts, "meta": meta, **extra}


OWNER = {
    "id": "42",
    "username": "owner_1",
    "name": "Owner One",
    "profile_image_url": "https://pbs.twimg.com/profile_images/1/a_normal.jpg",
}


# OAuth 1.0a signatures -----------------------------------------------------------

X_EXAMPLE = {
    "api_key": "xvz1evFS4wEEPTGEFPHBog",
    "api_secret": "kAcSOqF21Fu85e7zjz7ZN2U4ZRhfV3WpwPAoE3Z7kBw",
    "access_token": "370773112-GmHxMAgYyLbNEtIKZeRNFsMKPR9EyMZeS9weJAEb",
    "access_token_secret": "LswwdoUaIvS8ltyTt5jkRh4J50vUPVVHtR2YPi5kE",
}


def signed_header(auth: Any, method: str, url: str, **options: Any) -> dict[str, str]:
    """Prepare a request with `auth` and return its OAuth header's parameters."""
    prepared = requests.Request(method, url, auth=auth, **options).prepare()
    header = prepared.headers["Authorization"]
    if isinstance(header, bytes):
        header = header.decode()
    return {
        name: unquote(value)
        for name, value in oauth_utils.parse_authorization_header(header)
    }


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("api.twitter.com", "hCtSmYh+iHYCEqBWrE7C7hYmtUk="),
        ("api.x.com", "Ls93hJiZbQ3akF3HF3x1Bz8/zU4="),
    ],
)
def test_oauth1_signature_matches_x_example(host: str, expected: str):
    auth = oauth1_auth(**X_EXAMPLE)
    auth.client.nonce = "kYjzVBB8Y0ZFabxSWbWovY3uYSQ2pTgmZeNu2VS4cg"
    auth.client.timestamp = "1318622958"
    params = signed_header(
        auth,
        "POST",
        f"https://{host}/1.1/statuses/update.json?include_entities=true",
        data={"status": "Hello Ladies + Gentlemen, a signed OAuth request!"},
    )
    assert params["oauth_signature"] == expected
    assert params["oauth_signature_method"] == "HMAC-SHA1"
    assert params["oauth_version"] == "1.0"
    assert params["oauth_consumer_key"] == X_EXAMPLE["api_key"]
    assert params["oauth_token"] == X_EXAMPLE["access_token"]


def test_oauth1_signature_not_the_old_path_value():
    auth = oauth1_auth(**X_EXAMPLE)
    auth.client.nonce = "kYjzVBB8Y0ZFabxSWbWovY3uYSQ2pTgmZeNu2VS4cg"
    auth.client.timestamp = "1318622958"
    params = signed_header(
        auth,
        "POST",
        "https://api.twitter.com/1.1/statuses/update.json?include_entities=true",
        data={"status": "Hello Ladies + Gentlemen, a signed OAuth request!"},
    )
    # X's "Authorizing a request" page prints this value, made for the /1/ path.
    assert params["oauth_signature"] != "tnnArxj06cWHq44gCs1OSKk/jLY="


def test_oauth1_signature_matches_rfc5849_corrected_value():
    # RFC 5849 section 3.1 sends no oauth_version, so the request's OAuth
    # parameters are set as printed there, and oauthlib's client signs them.
    auth = oauth1_auth(
        "9djdj82h48djs9d2", "j49sk3j29djd", "kkk9d7dh3k39sjv7", "dh893hdasih9"
    )
    request = OAuthRequest(
        "http://example.com/request?b5=%3D%253D&a3=a&c%40=&a2=r%20b",
        "POST",
        "c2&a3=2+q",
        {"Content-Type": "application/x-www-form-urlencoded"},
    )
    request.oauth_params = [
        ("oauth_consumer_key", "9djdj82h48djs9d2"),
        ("oauth_token", "kkk9d7dh3k39sjv7"),
        ("oauth_signature_method", "HMAC-SHA1"),
        ("oauth_timestamp", "137131201"),
        ("oauth_nonce", "7d8f3e4a"),
    ]
    signature = auth.client.get_oauth_signature(request)
    assert signature == "r6/TJjbCOr97/+UU0NsvSne7s5g="
    assert signature != "bYT5CMsGcbgUdFHObYMEfcx6bsw="  # the RFC's misprint


@pytest.mark.parametrize(
    ("text", "encoded"),
    [
        ("Ladies + Gentlemen", "Ladies%20%2B%20Gentlemen"),
        ("An encoded string!", "An%20encoded%20string%21"),
        ("Dogs, Cats & Mice", "Dogs%2C%20Cats%20%26%20Mice"),
        ("☃", "%E2%98%83"),
        ("A-Z a-z 0-9 -._~", "A-Z%20a-z%200-9%20-._~"),
    ],
)
def test_oauth1_percent_encoding_rfc3986(text: str, encoded: str):
    assert oauth_utils.escape(text) == encoded


def test_oauth1_client_sends_signed_header(client, requests_mock):
    requests_mock.get(ME_URL, json={"data": OWNER})
    auth = oauth1_auth(**X_EXAMPLE)
    client.get_me(auth)
    header = requests_mock.last_request.headers["Authorization"]
    header = header.decode() if isinstance(header, bytes) else header
    params = dict(oauth_utils.parse_authorization_header(header))
    assert header.startswith("OAuth ")
    assert params["oauth_signature_method"] == "HMAC-SHA1"
    assert params["oauth_consumer_key"] == X_EXAMPLE["api_key"]
    assert params["oauth_signature"]
    assert X_EXAMPLE["api_secret"] not in header
    assert X_EXAMPLE["access_token_secret"] not in header


# App-only bearer and OAuth 2.0 -----------------------------------------------------


def test_fetch_app_bearer_sends_basic_credentials(client, requests_mock):
    requests_mock.post(
        f"{API}/oauth2/token", json={"token_type": "bearer", "access_token": BEARER}
    )
    token = client.fetch_app_bearer("key with space", "secret/+=")
    sent = requests_mock.last_request
    assert token == BEARER
    assert basic_pair(sent) == ("key%20with%20space", "secret%2F%2B%3D")
    assert sent.headers["Content-Type"] == (
        "application/x-www-form-urlencoded;charset=UTF-8"
    )
    assert sent.text == "grant_type=client_credentials"


def test_fetch_app_bearer_checks_token_type(client, requests_mock):
    requests_mock.post(
        f"{API}/oauth2/token", json={"token_type": "mac", "access_token": BEARER}
    )
    with pytest.raises(XUnavailableError) as caught:
        client.fetch_app_bearer("key", "secret")
    assert "bearer" in str(caught.value)
    assert BEARER not in str(caught.value)


def test_fetch_app_bearer_code_99(client, requests_mock):
    body = {
        "errors": [
            {
                "code": 99,
                "message": "Unable to verify your credentials",
                "label": "authenticity_token_error",
            }
        ]
    }
    requests_mock.post(f"{API}/oauth2/token", status_code=403, json=body)
    with pytest.raises(XAuthError) as caught:
        client.fetch_app_bearer("key", "secret-value-1")
    assert caught.value.code == 99
    assert "X_API_KEY" in str(caught.value)
    assert "secret-value-1" not in str(caught.value)


def test_authorize_url_has_pkce_parameters(client):
    url = client.authorize_url(CLIENT_ID, "https://site.test/cb", "state-1", "ch" * 22)
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == (
        "https://x.com/i/oauth2/authorize"
    )
    assert query["response_type"] == ["code"]
    assert query["client_id"] == [CLIENT_ID]
    assert query["redirect_uri"] == ["https://site.test/cb"]
    assert query["state"] == ["state-1"]
    assert query["code_challenge"] == ["ch" * 22]
    assert query["code_challenge_method"] == ["S256"]
    assert query["scope"] == ["tweet.read users.read like.read offline.access"]
    assert "scope=tweet.read%20users.read" in parts.query


def token_body(**extra: Any) -> dict[str, Any]:
    return {
        "token_type": "bearer",
        "expires_in": 7200,
        "access_token": "user-access-1",
        "scope": "tweet.read users.read like.read offline.access",
        "refresh_token": "user-refresh-1",
        **extra,
    }


def test_exchange_code_confidential_client(client, requests_mock):
    requests_mock.post(TOKEN_URL, json=token_body())
    token = client.exchange_code(
        CLIENT_ID, CLIENT_SECRET, CODE, "https://site.test/cb", VERIFIER
    )
    sent = requests_mock.last_request
    assert basic_pair(sent) == (CLIENT_ID, CLIENT_SECRET)
    assert sent_form(sent) == {
        "grant_type": "authorization_code",
        "code": CODE,
        "redirect_uri": "https://site.test/cb",
        "code_verifier": VERIFIER,
    }
    assert token.access_token == "user-access-1"
    assert token.refresh_token == "user-refresh-1"
    assert token.expires_in == 7200
    assert token.scopes == ["tweet.read", "users.read", "like.read", "offline.access"]
    assert "user-access-1" not in repr(token)


def test_exchange_code_public_client(client, requests_mock):
    requests_mock.post(TOKEN_URL, json=token_body())
    client.exchange_code(CLIENT_ID, None, CODE, "https://site.test/cb", VERIFIER)
    sent = requests_mock.last_request
    assert "Authorization" not in sent.headers
    assert sent_form(sent)["client_id"] == CLIENT_ID


def test_refresh_sends_refresh_grant(client, requests_mock):
    requests_mock.post(TOKEN_URL, json=token_body(refresh_token="user-refresh-2"))
    token = client.refresh(CLIENT_ID, CLIENT_SECRET, REFRESH_TOKEN)
    sent = requests_mock.last_request
    assert sent_form(sent) == {
        "grant_type": "refresh_token",
        "refresh_token": REFRESH_TOKEN,
    }
    assert basic_pair(sent) == (CLIENT_ID, CLIENT_SECRET)
    assert token.refresh_token == "user-refresh-2"


def test_token_without_offline_access_has_no_refresh(client, requests_mock):
    body = token_body(scope="tweet.read users.read")
    del body["refresh_token"]
    requests_mock.post(TOKEN_URL, json=body)
    token = client.exchange_code(
        CLIENT_ID, None, CODE, "https://site.test/cb", VERIFIER
    )
    assert token.refresh_token is None


@pytest.mark.parametrize(
    ("error", "hint"),
    [
        ("invalid_request", "code_verifier"),
        ("unauthorized_client", "X_CLIENT_SECRET"),
        ("invalid_client", "X_CLIENT_ID"),
    ],
)
def test_token_endpoint_errors(client, requests_mock, error: str, hint: str):
    body = {"error": error, "error_description": f"Bad value {CODE} and {VERIFIER}."}
    requests_mock.post(TOKEN_URL, status_code=400, json=body)
    with pytest.raises(XAuthError) as caught:
        client.exchange_code(
            CLIENT_ID, CLIENT_SECRET, CODE, "https://s.test/cb", VERIFIER
        )
    message = str(caught.value)
    assert caught.value.kind == error
    assert caught.value.retryable is False
    assert hint in message
    assert CODE not in message
    assert VERIFIER not in message
    assert CLIENT_SECRET not in message


def test_refresh_reused_token_rejected(client, requests_mock):
    body = {
        "error": "invalid_request",
        "error_description": "Value passed for the token was invalid.",
    }
    requests_mock.post(TOKEN_URL, status_code=400, json=body)
    with pytest.raises(XAuthError) as caught:
        client.refresh(CLIENT_ID, CLIENT_SECRET, REFRESH_TOKEN)
    assert "Value passed for the token was invalid" in str(caught.value)
    assert REFRESH_TOKEN not in str(caught.value)


# Reads ---------------------------------------------------------------------------


def test_timeline_sends_fields_and_expansions(client, bearer, requests_mock):
    requests_mock.get(TIMELINE_URL, json=timeline_body([]))
    client.get_timeline(
        bearer, "42", max_results=50, pagination_token="tok1", exclude="retweets"
    )
    query = sent_query(requests_mock.last_request)
    for name, value in READ_PARAMS.items():
        assert query[name] == value
    assert query["tweet.fields"] == (
        "created_at,author_id,attachments,entities,public_metrics,lang"
    )
    assert query["expansions"] == "attachments.media_keys,author_id"
    assert query["media.fields"] == "url,preview_image_url,type,alt_text,width,height"
    assert query["user.fields"] == "username,name,profile_image_url"
    assert query["max_results"] == "50"
    assert query["pagination_token"] == "tok1"
    assert query["exclude"] == "retweets"
    assert requests_mock.last_request.headers["Authorization"] == f"Bearer {BEARER}"


def test_timeline_exclude_list(client, bearer, requests_mock):
    requests_mock.get(TIMELINE_URL, json=timeline_body([]))
    client.get_timeline(bearer, "42", exclude=["retweets", "replies"])
    assert sent_query(requests_mock.last_request)["exclude"] == "replies,retweets"


def test_timeline_small_page_raised_to_minimum(client, bearer, requests_mock):
    requests_mock.get(TIMELINE_URL, json=timeline_body([]))
    client.get_timeline(bearer, "42", max_results=2)
    assert sent_query(requests_mock.last_request)["max_results"] == "5"


def test_search_sends_query_and_next_token(client, bearer, requests_mock):
    requests_mock.get(SEARCH_URL, json=timeline_body([]))
    client.search_recent(bearer, "café -#ad from:owner_1", next_token="n2")
    query = sent_query(requests_mock.last_request)
    assert query["query"] == "café -#ad from:owner_1"
    assert query["next_token"] == "n2"
    assert "pagination_token" not in query
    assert query["max_results"] == "100"


def test_liked_sends_pagination_token(client, requests_mock):
    requests_mock.get(LIKED_URL, json=timeline_body([]))
    client.get_liked(BearerAuth("user-token"), "42", pagination_token="p3")
    assert sent_query(requests_mock.last_request)["pagination_token"] == "p3"


def test_get_user_by_username(client, bearer, requests_mock):
    requests_mock.get(f"{API}/2/users/by/username/owner_1", json={"data": OWNER})
    user = client.get_user_by_username(bearer, "@owner_1")
    assert user == OWNER
    assert sent_query(requests_mock.last_request)["user.fields"] == (
        "username,name,profile_image_url"
    )


@pytest.mark.parametrize(
    "username", ["", "has space", "sixteen_chars_xx", "dash-name", "émile", "a/b"]
)
def test_get_user_by_username_invalid(client, bearer, requests_mock, username: str):
    with pytest.raises(ValueError):
        client.get_user_by_username(bearer, username)
    assert requests_mock.call_count == 0


def test_get_user_unknown_is_not_found(client, bearer, requests_mock):
    # X returns HTTP 200 with only an `errors` list for an unknown username.
    body = {
        "errors": [
            {
                "value": "nobody_here",
                "detail": "Could not find user with username: [nobody_here].",
                "title": "Not Found Error",
                "resource_type": "user",
                "parameter": "username",
                "type": "https://api.twitter.com/2/problems/resource-not-found",
            }
        ]
    }
    requests_mock.get(f"{API}/2/users/by/username/nobody_here", json=body)
    with pytest.raises(XNotFoundError) as caught:
        client.get_user_by_username(bearer, "nobody_here")
    assert "nobody_here" in str(caught.value)


@pytest.mark.parametrize(
    ("call", "argument"),
    [
        ("search_recent", ""),
        ("search_recent", "   "),
        ("search_recent", "a" * 513),
    ],
)
def test_search_query_invalid(client, bearer, requests_mock, call, argument):
    with pytest.raises(ValueError):
        getattr(client, call)(bearer, argument)
    assert requests_mock.call_count == 0


def test_search_query_512_characters_accepted(client, bearer, requests_mock):
    requests_mock.get(SEARCH_URL, json=timeline_body([]))
    client.search_recent(bearer, "a" * 512)
    assert requests_mock.call_count == 1


@pytest.mark.parametrize("max_results", [0, 101, -1, True, "10"])
def test_max_results_invalid(client, bearer, requests_mock, max_results):
    with pytest.raises(ValueError):
        client.get_timeline(bearer, "42", max_results=max_results)
    assert requests_mock.call_count == 0


@pytest.mark.parametrize("user_id", ["", "abc", "42/../me", "1" * 21])
def test_user_id_invalid(client, bearer, requests_mock, user_id):
    with pytest.raises(ValueError):
        client.get_liked(bearer, user_id)
    assert requests_mock.call_count == 0


def test_exclude_invalid(client, bearer, requests_mock):
    with pytest.raises(ValueError):
        client.get_timeline(bearer, "42", exclude="quotes")
    assert requests_mock.call_count == 0


# Normalization -------------------------------------------------------------------


def full_page() -> dict[str, Any]:
    posts = [
        post(
            "101",
            text="Photo &amp; caption &lt;b&gt; https://t.co/pic1",
            created_at="2026-06-22T10:45:00.000Z",
            attachments={"media_keys": ["3_1", "3_2"]},
            entities={
                "urls": [
                    {
                        "url": "https://t.co/pic1",
                        "expanded_url": "https://x.com/owner_1/status/101/photo/1",
                        "media_key": "3_1",
                    }
                ]
            },
            public_metrics={
                "like_count": 5,
                "retweet_count": 1,
                "reply_count": 2,
                "quote_count": 3,
            },
            lang="en",
        ),
        post(
            "102",
            text="Read https://t.co/link1 now",
            created_at="2026-06-21T08:00:00.000Z",
            attachments={"media_keys": ["7_1", "16_1", "3_missing"]},
            entities={
                "urls": [
                    {
                        "url": "https://t.co/link1",
                        "expanded_url": "https://example.com/a?b=1&c=2",
                    }
                ]
            },
        ),
    ]
    includes = {
        "media": [
            {
                "media_key": "3_1",
                "type": "photo",
                "url": "https://pbs.twimg.com/media/a.jpg",
                "alt_text": "A pier",
                "width": 1200,
                "height": 900,
            },
            {"media_key": "3_2", "type": "photo", "url": "https://pbs.twimg.com/b.jpg"},
            {
                "media_key": "7_1",
                "type": "video",
                "preview_image_url": "https://pbs.twimg.com/v.jpg",
            },
            {
                "media_key": "16_1",
                "type": "animated_gif",
                "preview_image_url": "https://pbs.twimg.com/g.jpg",
            },
        ],
        "users": [OWNER],
    }
    return timeline_body(posts, "next-1", includes=includes)


def test_normalize_joins_media_and_author(client, bearer, requests_mock):
    requests_mock.get(TIMELINE_URL, json=full_page())
    page = client.get_timeline(bearer, "42")
    first, second = page.items

    assert first["id"] == "101"
    assert first["url"] == "https://x.com/owner_1/status/101"
    assert first["created_at"] == "2026-06-22T10:45:00+00:00"
    assert first["author"] == {
        "username": "owner_1",
        "name": "Owner One",
        "profile_image_url": OWNER["profile_image_url"],
    }
    assert first["media"][0] == {
        "type": "photo",
        "url": "https://pbs.twimg.com/media/a.jpg",
        "preview_image_url": "https://pbs.twimg.com/media/a.jpg",
        "alt_text": "A pier",
    }
    assert first["media"][1]["alt_text"] is None

    assert first["metrics"] == {
        "like_count": 5,
        "retweet_count": 1,
        "reply_count": 2,
        "quote_count": 3,
    }

    assert [m["type"] for m in second["media"]] == ["video", "animated_gif"]
    assert second["media"][0]["url"] == "https://pbs.twimg.com/v.jpg"
    assert second["media"][0]["preview_image_url"] == "https://pbs.twimg.com/v.jpg"
    assert second["media"][1]["url"] == "https://pbs.twimg.com/g.jpg"
    assert page.next_token == "next-1"
    assert page.partial_errors == []


def test_normalize_text_unescaped_and_links_expanded(client, bearer, requests_mock):
    requests_mock.get(TIMELINE_URL, json=full_page())
    first, second = client.get_timeline(bearer, "42").items
    assert first["text"] == "Photo & caption <b>"
    assert second["text"] == "Read https://example.com/a?b=1&c=2 now"


def test_normalize_missing_includes(client, bearer, requests_mock):
    body = timeline_body([post("7", attachments={"media_keys": ["3_9"]})])
    requests_mock.get(TIMELINE_URL, json=body)
    (item,) = client.get_timeline(bearer, "42").items
    assert item["url"] == "https://x.com/i/web/status/7"
    assert item["author"] == {"username": None, "name": None, "profile_image_url": None}
    assert item["media"] == []
    assert item["created_at"] is None
    assert item["metrics"] == {
        "like_count": 0,
        "retweet_count": 0,
        "reply_count": 0,
        "quote_count": 0,
    }


def test_normalize_empty_page(client, bearer, requests_mock):
    requests_mock.get(TIMELINE_URL, json={"meta": {"result_count": 0}})
    page = client.get_timeline(bearer, "42")
    assert page.items == []
    assert page.next_token is None


def test_normalize_data_not_a_list(client, bearer, requests_mock):
    requests_mock.get(TIMELINE_URL, json={"data": {"id": "1"}})
    with pytest.raises(XUnavailableError):
        client.get_timeline(bearer, "42")


def test_partial_errors_logged_and_items_kept(client, bearer, requests_mock, caplog):
    body = full_page()
    body["errors"] = [
        {
            "title": "Authorization Error",
            "detail": "Sorry, you are not authorized to see the Post with id: [55].",
            "type": f"{PROBLEMS}not-authorized-for-resource",
        },
        {"title": "Not Found Error", "detail": "Could not find tweet with id: [56]."},
    ]
    requests_mock.get(TIMELINE_URL, json=body)
    with caplog.at_level(logging.INFO):
        page = client.get_timeline(bearer, "42")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(page.items) == 2
    assert len(page.partial_errors) == 2
    assert len(warnings) == 1
    assert "2 partial errors" in warnings[0].getMessage()
    assert "Authorization Error" in warnings[0].getMessage()
    assert "[55]" in warnings[0].getMessage()


# Paging ----------------------------------------------------------------------------


def test_iter_pages_follows_tokens(client, bearer, requests_mock):
    pages = [
        timeline_body([post(str(i)) for i in range(100)], "t2"),
        timeline_body([post(str(i)) for i in range(100, 200)], "t3"),
        timeline_body([post(str(i)) for i in range(200, 250)]),
    ]
    requests_mock.get(TIMELINE_URL, [{"json": body} for body in pages])

    def fetch(token: str | None, size: int) -> XPage:
        return client.get_timeline(
            bearer, "42", max_results=size, pagination_token=token
        )

    items = client.iter_pages(fetch, 1000)
    tokens = [
        sent_query(r).get("pagination_token") for r in requests_mock.request_history
    ]
    assert len(items) == 250
    assert tokens == [None, "t2", "t3"]


def test_iter_pages_stops_at_max_items(client, bearer, requests_mock):
    pages = [
        timeline_body([post(str(i)) for i in range(100)], "t2"),
        timeline_body([post(str(i)) for i in range(100, 130)], "t3"),
    ]
    requests_mock.get(TIMELINE_URL, [{"json": body} for body in pages])

    def fetch(token: str | None, size: int) -> XPage:
        return client.get_timeline(
            bearer, "42", max_results=size, pagination_token=token
        )

    items = client.iter_pages(fetch, 130)
    sizes = [sent_query(r)["max_results"] for r in requests_mock.request_history]
    assert len(items) == 130
    assert sizes == ["100", "30"]


def test_iter_pages_stops_on_repeated_token(client):
    calls: list[str | None] = []

    def fetch(token: str | None, size: int) -> XPage:
        calls.append(token)
        return XPage([{"id": str(len(calls))}], "same", [])

    items = client.iter_pages(fetch, 100)
    assert calls == [None, "same"]
    assert len(items) == 2


def test_iter_pages_stops_on_empty_page(client):
    calls: list[str | None] = []

    def fetch(token: str | None, size: int) -> XPage:
        calls.append(token)
        return XPage([], "more", [])

    assert client.iter_pages(fetch, 100) == []
    assert calls == [None]


# Errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind", "error_class", "words"),
    [
        (403, "unsupported-authentication", XAuthError, "X_ACCESS_TOKEN_SECRET"),
        (403, "client-forbidden", XAuthError, "project"),
        (403, "not-authorized-for-resource", XAuthError, "own token"),
        (404, "resource-not-found", XNotFoundError, "found nothing"),
        (400, "invalid-request", XError, "parameters"),
        (503, "service-unavailable", XUnavailableError, "Try again later"),
    ],
)
def test_problem_json_kinds(
    client, bearer, requests_mock, status, kind, error_class, words
):
    body = {
        "title": "Problem",
        "detail": f"Detail for {kind}",
        "type": PROBLEMS + kind,
        "status": status,
    }
    requests_mock.get(
        LIKED_URL,
        status_code=status,
        json=body,
        headers={"Content-Type": "application/problem+json"},
    )
    with pytest.raises(error_class) as caught:
        client.get_liked(bearer, "42")
    assert type(caught.value) is error_class
    assert caught.value.kind == kind
    assert caught.value.status == status
    assert words in str(caught.value)
    assert BEARER not in str(caught.value)


def test_unsupported_authentication_names_the_keys(client, bearer, requests_mock):
    body = {
        "title": "Unsupported Authentication",
        "detail": "Authenticating with OAuth 2.0 Application-Only is forbidden.",
        "type": "https://api.twitter.com/2/problems/unsupported-authentication",
        "status": 403,
    }
    requests_mock.get(LIKED_URL, status_code=403, json=body)
    with pytest.raises(XAuthError) as caught:
        client.get_liked(bearer, "42")
    message = str(caught.value)
    assert "X_ACCESS_TOKEN and X_ACCESS_TOKEN_SECRET" in message
    assert "/admin/generate/x" in message
    assert "X_CLIENT_ID" in message
    assert caught.value.retryable is False


@pytest.mark.parametrize(
    ("code", "status", "words"),
    [
        (32, 401, "signature"),
        (89, 401, "invalid or expired"),
        (99, 403, "X_API_SECRET"),
        (135, 401, "server clock"),
        (453, 403, "access level"),
    ],
)
def test_errors_shape_auth_codes(client, requests_mock, code, status, words):
    body = {"errors": [{"code": code, "message": "Some message."}]}
    requests_mock.get(ME_URL, status_code=status, json=body)
    with pytest.raises(XAuthError) as caught:
        client.get_me(oauth1_auth(**X_EXAMPLE))
    assert caught.value.code == code
    assert caught.value.status == status
    assert words in str(caught.value)
    assert X_EXAMPLE["access_token"] not in str(caught.value)


def test_errors_shape_code_88_rate_limited(client, bearer, requests_mock, clock):
    body = {"errors": [{"code": 88, "message": "Rate limit exceeded"}]}
    headers = {"x-rate-limit-reset": str(int(START) + 60)}
    requests_mock.get(TIMELINE_URL, status_code=429, json=body, headers=headers)
    with pytest.raises(XRateLimitedError) as caught:
        client.get_timeline(bearer, "42")
    assert caught.value.reset_at == START + 60
    assert caught.value.usage_capped is False


def test_unauthorized_about_blank(client, bearer, requests_mock):
    body = {
        "title": "Unauthorized",
        "type": "about:blank",
        "status": 401,
        "detail": "Unauthorized",
    }
    requests_mock.get(TIMELINE_URL, status_code=401, json=body)
    with pytest.raises(XAuthError) as caught:
        client.get_timeline(bearer, "42")
    assert caught.value.status == 401


def test_rate_limited_waits_for_reset(client, bearer, requests_mock, clock):
    reset = int(START) + 600
    body = {
        "title": "Too Many Requests",
        "detail": "Too Many Requests",
        "type": "about:blank",
        "status": 429,
    }
    headers = {
        "x-rate-limit-limit": "900",
        "x-rate-limit-remaining": "0",
        "x-rate-limit-reset": str(reset),
    }
    requests_mock.get(TIMELINE_URL, status_code=429, json=body, headers=headers)
    with pytest.raises(XRateLimitedError) as first:
        client.get_timeline(bearer, "42")
    assert first.value.reset_at == reset
    assert first.value.retryable is True
    assert first.value.usage_capped is False
    assert "600 seconds" in str(first.value)

    clock.now = reset - 1
    with pytest.raises(XRateLimitedError) as second:
        client.get_timeline(bearer, "42")
    assert requests_mock.call_count == 1
    assert "not sent" in str(second.value)
    assert second.value.reset_at == reset

    requests_mock.get(SEARCH_URL, json=timeline_body([]))
    client.search_recent(bearer, "other endpoint")
    assert requests_mock.call_count == 2

    clock.now = reset
    requests_mock.get(TIMELINE_URL, json=timeline_body([]))
    client.get_timeline(bearer, "42")
    assert requests_mock.call_count == 3


def test_rate_limit_remaining_zero_blocks_next_call(
    client, bearer, requests_mock, clock
):
    headers = {
        "x-rate-limit-limit": "900",
        "x-rate-limit-remaining": "0",
        "x-rate-limit-reset": str(int(START) + 300),
    }
    requests_mock.get(TIMELINE_URL, json=timeline_body([]), headers=headers)
    client.get_timeline(bearer, "42")
    with pytest.raises(XRateLimitedError):
        client.get_timeline(bearer, "777")  # the same endpoint, another user
    assert requests_mock.call_count == 1


def test_rate_limited_without_reset_header(client, bearer, requests_mock, clock):
    requests_mock.get(TIMELINE_URL, status_code=429, text="Too Many Requests")
    with pytest.raises(XRateLimitedError) as caught:
        client.get_timeline(bearer, "42")
    assert caught.value.reset_at == START + 900


def test_usage_cap_distinguished(client, bearer, requests_mock, clock):
    body = {
        "title": "UsageCapExceeded",
        "detail": "Usage cap exceeded: Monthly product cap",
        "type": f"{PROBLEMS}usage-capped",
        "period": "Monthly",
        "scope": "Product",
    }
    headers = {
        "x-rate-limit-remaining": "899",
        "x-rate-limit-reset": str(int(START) + 30),
    }
    requests_mock.get(TIMELINE_URL, status_code=429, json=body, headers=headers)
    with pytest.raises(XRateLimitedError) as caught:
        client.get_timeline(bearer, "42")
    message = str(caught.value)
    assert caught.value.usage_capped is True
    assert caught.value.retryable is False
    assert caught.value.kind == "usage-capped"
    assert "monthly" in message
    assert "will not clear" in message
    assert caught.value.reset_at >= START + 900

    requests_mock.get(SEARCH_URL, json=timeline_body([]))
    with pytest.raises(XRateLimitedError) as blocked:
        client.search_recent(bearer, "anything")
    assert blocked.value.usage_capped is True
    assert requests_mock.call_count == 1


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (500, {"title": "Internal Error"}),
        (502, "<html>Bad gateway</html>"),
        (503, "Over capacity"),
        (200, "<html>not json</html>"),
        (200, "[1, 2]"),
    ],
)
def test_unavailable_responses(client, bearer, requests_mock, status, body):
    if isinstance(body, dict):
        requests_mock.get(TIMELINE_URL, status_code=status, json=body)
    else:
        requests_mock.get(TIMELINE_URL, status_code=status, text=body)
    with pytest.raises(XUnavailableError) as caught:
        client.get_timeline(bearer, "42")
    assert caught.value.retryable is True


@pytest.mark.parametrize(
    "failure", [requests.ConnectionError("down"), requests.ConnectTimeout("slow")]
)
def test_transport_failures(client, bearer, requests_mock, failure):
    requests_mock.get(TIMELINE_URL, exc=failure)
    with pytest.raises(XUnavailableError) as caught:
        client.get_timeline(bearer, "42")
    assert caught.value.retryable is True
    assert caught.value.__cause__ is None


# Logging ----------------------------------------------------------------------------


def test_one_info_line_per_call(client, bearer, requests_mock, caplog):
    requests_mock.get(SEARCH_URL, json=timeline_body([]))
    with caplog.at_level(logging.DEBUG, logger="x"):
        client.search_recent(bearer, "secret-ish query")
    lines = [r.getMessage() for r in caplog.records if r.name == "x"]
    assert len(lines) == 1
    assert lines[0].startswith("X GET /2/tweets/search/recent -> 200 in ")
    assert "query" not in lines[0]


def test_no_secret_in_logs_or_messages(client, requests_mock, caplog):
    echo = f"Bad {CODE} {VERIFIER} {CLIENT_SECRET}"
    requests_mock.post(
        TOKEN_URL,
        status_code=400,
        json={"error": "invalid_request", "error_description": echo},
    )
    requests_mock.get(
        ME_URL, status_code=401, json={"errors": [{"code": 32, "message": "x"}]}
    )
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(XAuthError) as exchange:
            client.exchange_code(
                CLIENT_ID, CLIENT_SECRET, CODE, "https://s.test", VERIFIER
            )
        with pytest.raises(XAuthError) as signed:
            client.get_me(oauth1_auth(**X_EXAMPLE))
    logged = caplog.text + str(exchange.value) + str(signed.value)
    for secret in (
        CODE,
        VERIFIER,
        CLIENT_SECRET,
        X_EXAMPLE["api_secret"],
        X_EXAMPLE["access_token"],
        X_EXAMPLE["access_token_secret"],
        "oauth_signature",
        "Authorization",
    ):
        assert secret not in logged


def test_bearer_auth_repr_hides_token():
    assert BEARER not in repr(BearerAuth(BEARER))


def test_bearer_auth_empty_rejected():
    with pytest.raises(ValueError):
        BearerAuth("")
