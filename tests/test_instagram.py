"""Unit tests for the Instagram client, against requests_mock responses."""

from __future__ import annotations

import json
import logging
import math
import traceback
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests
from requests_mock import ANY

from instagram import (
    MEDIA_FIELDS,
    PROFILE_FIELDS,
    Endpoints,
    InstagramClient,
    InstagramError,
    LongLivedToken,
    OAuthExchangeError,
    RateLimitedError,
    TokenInvalidError,
    UpstreamUnavailableError,
)

AUTHORIZE_URL = "https://www.instagram.com/oauth/authorize"
TOKEN_URL = "https://api.instagram.com/oauth/access_token"
GRAPH_URL = "https://graph.instagram.com"
ME_URL = f"{GRAPH_URL}/v25.0/me"
MEDIA_URL = f"{GRAPH_URL}/v25.0/me/media"
CLIENT_ID = "990011223344"
CLIENT_SECRET = "client-secret-7f3a9c21"
ACCESS_TOKEN = "IGAAtoken-5d8e0b7a"
CODE = "AQBcode-4c1f9e"
REDIRECT_URI = "https://example.test/admin/callback/instagram"
TIMEOUT = (3.05, 10.0)
SECRETS = (ACCESS_TOKEN, CLIENT_SECRET, CODE)


@pytest.fixture
def client() -> InstagramClient:
    endpoints = Endpoints(AUTHORIZE_URL, TOKEN_URL, GRAPH_URL, "v25.0")
    return InstagramClient(endpoints, CLIENT_ID, CLIENT_SECRET)


def sent_query(request: Any) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(request.url).query))


def sent_path(request: Any) -> str:
    return urlsplit(request.url).path


def graph_error(
    code: int, subcode: int | None = None, message: str = "Failed"
) -> dict[str, Any]:
    error: dict[str, Any] = {"message": message, "type": "OAuthException"}
    error.update(code=code, fbtrace_id="AbCdEf")
    if subcode is not None:
        error["error_subcode"] = subcode
    return {"error": error}


def exchange_error(message: str) -> dict[str, Any]:
    return {"error_type": "OAuthException", "code": 400, "error_message": message}


# Authorization URL


def test_authorize_url_parameters(client):
    url = client.authorize_url(REDIRECT_URI, "state-1")
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))

    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == AUTHORIZE_URL
    assert query == {
        "client_id": CLIENT_ID,
        "redirect_uri": REDIRECT_URI,
        "response_type": "code",
        "scope": "instagram_business_basic",
        "state": "state-1",
    }
    assert "redirect_uri=https%3A%2F%2Fexample.test%2Fadmin" in url


def test_authorize_url_appends_to_existing_query():
    endpoints = Endpoints(
        f"{AUTHORIZE_URL}?force_reauth=true", TOKEN_URL, GRAPH_URL, "v25.0"
    )
    url = InstagramClient(endpoints, CLIENT_ID, CLIENT_SECRET).authorize_url(
        REDIRECT_URI, "s", scope="a,b"
    )
    query = dict(parse_qsl(urlsplit(url).query))

    assert url.count("?") == 1
    assert query["force_reauth"] == "true"
    assert query["scope"] == "a,b"


# Code exchange


def test_exchange_code_documented_shape(client, requests_mock):
    body = {
        "data": [
            {
                "access_token": ACCESS_TOKEN,
                "user_id": "1020304050",
                "permissions": "instagram_business_basic, instagram_business_content",
            }
        ]
    }
    requests_mock.post(TOKEN_URL, json=body)

    token = client.exchange_code(CODE, REDIRECT_URI)

    assert token.access_token == ACCESS_TOKEN
    assert token.user_id == "1020304050"
    assert token.permissions == [
        "instagram_business_basic",
        "instagram_business_content",
    ]


def test_exchange_code_sends_form(client, requests_mock):
    adapter = requests_mock.post(TOKEN_URL, json={"access_token": "t", "user_id": 1})

    client.exchange_code(CODE, REDIRECT_URI)
    request = adapter.last_request

    assert request.method == "POST"
    assert sent_path(request) == "/oauth/access_token"
    assert dict(parse_qsl(request.text)) == {
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "grant_type": "authorization_code",
        "redirect_uri": REDIRECT_URI,
        "code": CODE,
    }
    assert sent_query(request) == {}
    assert request.timeout == TIMEOUT


def test_exchange_code_flat_shape(client, requests_mock):
    body = {
        "access_token": ACCESS_TOKEN,
        "user_id": 27640875392278831,
        "permissions": ["instagram_business_basic"],
    }
    requests_mock.post(TOKEN_URL, json=body)

    token = client.exchange_code(CODE, REDIRECT_URI)

    assert token.access_token == ACCESS_TOKEN
    assert token.user_id == "27640875392278831"
    assert token.permissions == ["instagram_business_basic"]


def test_exchange_code_without_permissions(client, requests_mock):
    requests_mock.post(TOKEN_URL, json={"access_token": ACCESS_TOKEN, "user_id": 7})

    token = client.exchange_code(CODE, REDIRECT_URI)

    assert token.permissions == []


def test_exchange_code_strips_fragment_marker(client, requests_mock):
    adapter = requests_mock.post(TOKEN_URL, json={"access_token": "t", "user_id": 1})

    client.exchange_code(f"{CODE}#_", REDIRECT_URI)

    assert dict(parse_qsl(adapter.last_request.text))["code"] == CODE


def test_exchange_code_empty_rejected(client, requests_mock):
    adapter = requests_mock.post(TOKEN_URL, json={})

    with pytest.raises(ValueError):
        client.exchange_code("#_", REDIRECT_URI)
    assert adapter.call_count == 0


@pytest.mark.parametrize(
    "body",
    [
        {"data": []},
        {"data": "token"},
        {"data": [{"user_id": "1"}]},
        {"access_token": "", "user_id": "1"},
        {"access_token": "t"},
        {"access_token": "t", "user_id": True},
        {"access_token": "t", "user_id": None},
    ],
)
def test_exchange_code_wrong_shape(client, requests_mock, body):
    requests_mock.post(TOKEN_URL, json=body)

    with pytest.raises(UpstreamUnavailableError) as caught:
        client.exchange_code(CODE, REDIRECT_URI)
    assert caught.value.retryable is True


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("Invalid platform app", "Instagram app ID and secret"),
        ("Matching code was not found or was already used", "/admin/generate"),
        (
            "Error validating verification code. Please make sure your redirect_uri "
            "is identical to the one you used in the OAuth dialog request",
            "INSTAGRAM_REDIRECT_URI",
        ),
        ("Something else went wrong", "INSTAGRAM_CLIENT_ID"),
    ],
)
def test_exchange_code_error_hints(client, requests_mock, message, expected):
    requests_mock.post(TOKEN_URL, status_code=400, json=exchange_error(message))

    with pytest.raises(OAuthExchangeError) as caught:
        client.exchange_code(CODE, REDIRECT_URI)
    error = caught.value

    assert expected in error.hint
    assert error.hint in error.message
    assert message.rstrip(".") in error.message
    assert error.code == 400
    assert error.status == 400
    assert error.retryable is False


def test_exchange_code_hint_names_meta_app_id(client, requests_mock):
    body = exchange_error("Invalid platform app")
    requests_mock.post(TOKEN_URL, status_code=400, json=body)

    with pytest.raises(OAuthExchangeError) as caught:
        client.exchange_code(CODE, REDIRECT_URI)

    assert "not the Meta app ID" in caught.value.hint


def test_exchange_code_hint_for_used_code(client, requests_mock):
    body = exchange_error("Matching code was not found or was already used")
    requests_mock.post(TOKEN_URL, status_code=400, json=body)

    with pytest.raises(OAuthExchangeError) as caught:
        client.exchange_code(CODE, REDIRECT_URI)

    assert "expired" in caught.value.hint
    assert "Start again from /admin/generate" in caught.value.hint


# Long-lived exchange and refresh


def test_exchange_long_lived_request(client, requests_mock):
    body = {"access_token": "long-1", "token_type": "bearer", "expires_in": 5183944}
    adapter = requests_mock.get(f"{GRAPH_URL}/access_token", json=body)

    token = client.exchange_long_lived(ACCESS_TOKEN)
    request = adapter.last_request

    assert token == LongLivedToken("long-1", "bearer", 5183944)
    assert request.method == "GET"
    assert sent_path(request) == "/access_token"
    assert sent_query(request) == {
        "grant_type": "ig_exchange_token",
        "client_secret": CLIENT_SECRET,
        "access_token": ACCESS_TOKEN,
    }
    assert request.timeout == TIMEOUT


def test_refresh_request(client, requests_mock):
    body = {"access_token": "long-2", "token_type": "bearer", "expires_in": "5184000"}
    adapter = requests_mock.get(f"{GRAPH_URL}/refresh_access_token", json=body)

    token = client.refresh(ACCESS_TOKEN)
    request = adapter.last_request

    assert token == LongLivedToken("long-2", "bearer", 5184000)
    assert request.method == "GET"
    assert sent_path(request) == "/refresh_access_token"
    assert sent_query(request) == {
        "grant_type": "ig_refresh_token",
        "access_token": ACCESS_TOKEN,
    }
    assert request.timeout == TIMEOUT


def test_refresh_graph_url_with_trailing_slash(requests_mock):
    endpoints = Endpoints(AUTHORIZE_URL, TOKEN_URL, f"{GRAPH_URL}/", "v25.0")
    body = {"access_token": "long", "expires_in": 60}
    adapter = requests_mock.get(f"{GRAPH_URL}/refresh_access_token", json=body)

    token = InstagramClient(endpoints, CLIENT_ID, CLIENT_SECRET).refresh(ACCESS_TOKEN)

    assert sent_path(adapter.last_request) == "/refresh_access_token"
    assert token.token_type == "bearer"


@pytest.mark.parametrize(
    "body",
    [
        {"token_type": "bearer", "expires_in": 60},
        {"access_token": "", "expires_in": 60},
        {"access_token": 123, "expires_in": 60},
        {"access_token": "t"},
        {"access_token": "t", "expires_in": "soon"},
        {"access_token": "t", "expires_in": -5},
        {"access_token": "t", "expires_in": True},
    ],
)
def test_refresh_wrong_shape(client, requests_mock, body):
    requests_mock.get(f"{GRAPH_URL}/refresh_access_token", json=body)

    with pytest.raises(UpstreamUnavailableError):
        client.refresh(ACCESS_TOKEN)


# Graph errors


@pytest.mark.parametrize(
    ("subcode", "reason"),
    [(463, "expired"), (460, "password_changed"), (None, "revoked"), (458, "revoked")],
)
@pytest.mark.parametrize("status", [400, 401, 403])
def test_token_invalid_reasons(client, requests_mock, subcode, reason, status):
    body = graph_error(190, subcode, "Error validating access token")
    requests_mock.get(ME_URL, status_code=status, json=body)

    with pytest.raises(TokenInvalidError) as caught:
        client.get_profile(ACCESS_TOKEN)
    error = caught.value

    assert error.reason == reason
    assert error.code == 190
    assert error.subcode == subcode
    assert error.status == status
    assert error.retryable is False
    assert error.owner_message.endswith(
        "Connect the account again from /admin/generate."
    )
    assert "Error validating access token" in error.message


def test_token_invalid_owner_messages_differ(client, requests_mock):
    messages = set()
    for subcode in (463, 460, None):
        requests_mock.get(ME_URL, status_code=400, json=graph_error(190, subcode))
        with pytest.raises(TokenInvalidError) as caught:
            client.get_profile(ACCESS_TOKEN)
        messages.add(caught.value.owner_message)

    assert len(messages) == 3


@pytest.mark.parametrize("code", [4, 17, 32, 613, 80002])
def test_rate_limit_codes(client, requests_mock, code):
    body = graph_error(code, message="Application request limit reached")
    requests_mock.get(MEDIA_URL, status_code=400, json=body)

    with pytest.raises(RateLimitedError) as caught:
        client.get_media_page(ACCESS_TOKEN)
    error = caught.value

    assert error.code == code
    assert error.retry_after == 900
    assert error.retryable is True
    assert "900 seconds" in error.message


def test_rate_limit_http_429_with_retry_after(client, requests_mock):
    requests_mock.get(MEDIA_URL, status_code=429, headers={"Retry-After": "120"})

    with pytest.raises(RateLimitedError) as caught:
        client.get_media_page(ACCESS_TOKEN)

    assert caught.value.retry_after == 120
    assert caught.value.status == 429


def test_rate_limit_http_429_without_retry_after(client, requests_mock):
    requests_mock.get(MEDIA_URL, status_code=429, text="<html>Too many</html>")

    with pytest.raises(RateLimitedError) as caught:
        client.get_media_page(ACCESS_TOKEN)

    assert caught.value.retry_after == 900


def test_rate_limit_http_429_with_json_body(client, requests_mock):
    requests_mock.get(MEDIA_URL, status_code=429, json={"message": "slow down"})

    with pytest.raises(RateLimitedError) as caught:
        client.get_media_page(ACCESS_TOKEN)

    assert caught.value.retry_after == 900


def test_rate_limit_usage_header(client, requests_mock):
    usage = {
        "17841400000000000": [
            {
                "type": "instagram",
                "call_count": 100,
                "estimated_time_to_regain_access": 7,
            },
            {
                "type": "instagram",
                "call_count": 90,
                "estimated_time_to_regain_access": 3,
            },
        ]
    }
    headers = {"X-Business-Use-Case-Usage": json.dumps(usage)}
    requests_mock.get(
        MEDIA_URL, status_code=400, json=graph_error(80002), headers=headers
    )

    with pytest.raises(RateLimitedError) as caught:
        client.get_media_page(ACCESS_TOKEN)

    assert caught.value.retry_after == 7 * 60


def test_rate_limit_retry_after_beats_usage_header(client, requests_mock):
    usage = {"1": [{"estimated_time_to_regain_access": 30}]}
    headers = {"Retry-After": "45", "X-Business-Use-Case-Usage": json.dumps(usage)}
    requests_mock.get(MEDIA_URL, status_code=400, json=graph_error(4), headers=headers)

    with pytest.raises(RateLimitedError) as caught:
        client.get_media_page(ACCESS_TOKEN)

    assert caught.value.retry_after == 45


@pytest.mark.parametrize(
    "usage",
    ["not json", "[]", '{"1": "x"}', '{"1": [{"estimated_time_to_regain_access": 0}]}'],
)
def test_rate_limit_unusable_usage_header(client, requests_mock, usage):
    headers = {"X-Business-Use-Case-Usage": usage}
    requests_mock.get(MEDIA_URL, status_code=400, json=graph_error(4), headers=headers)

    with pytest.raises(RateLimitedError) as caught:
        client.get_media_page(ACCESS_TOKEN)

    assert caught.value.retry_after == 900


def test_invalid_parameter_error(client, requests_mock):
    body = graph_error(100, message="Tried accessing nonexisting field (colour)")
    requests_mock.get(MEDIA_URL, status_code=400, json=body)

    with pytest.raises(InstagramError) as caught:
        client.get_media_page(ACCESS_TOKEN)
    error = caught.value

    assert type(error) is InstagramError
    assert error.code == 100
    assert error.retryable is False
    assert "nonexisting field" in error.message


def test_graph_error_with_http_200(client, requests_mock):
    requests_mock.get(ME_URL, status_code=200, json=graph_error(190, 463))

    with pytest.raises(TokenInvalidError):
        client.get_profile(ACCESS_TOKEN)


def test_transient_graph_code(client, requests_mock):
    body = graph_error(2, message="Service temporarily unavailable")
    requests_mock.get(ME_URL, status_code=400, json=body)

    with pytest.raises(UpstreamUnavailableError) as caught:
        client.get_profile(ACCESS_TOKEN)

    assert caught.value.code == 2


# Unusable responses


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_errors(client, requests_mock, status):
    requests_mock.get(MEDIA_URL, status_code=status, json={"error": "busy"})

    with pytest.raises(UpstreamUnavailableError) as caught:
        client.get_media_page(ACCESS_TOKEN)

    assert caught.value.status == status
    assert caught.value.retryable is True


@pytest.mark.parametrize("status", [200, 502])
def test_html_body(client, requests_mock, status):
    html = "<!DOCTYPE html><html><body>Sorry, something went wrong.</body></html>"
    requests_mock.get(MEDIA_URL, status_code=status, text=html)

    with pytest.raises(UpstreamUnavailableError) as caught:
        client.get_media_page(ACCESS_TOKEN)

    assert caught.value.status == status
    assert "not JSON" in caught.value.message


def test_truncated_json(client, requests_mock):
    requests_mock.get(MEDIA_URL, text='{"data": [{"id": "1", "caption": "Sun')

    with pytest.raises(UpstreamUnavailableError) as caught:
        client.get_media_page(ACCESS_TOKEN)

    assert isinstance(caught.value.__cause__, ValueError)


def test_unknown_client_error(client, requests_mock):
    requests_mock.get(ME_URL, status_code=404, json={"detail": "no such route"})

    with pytest.raises(InstagramError) as caught:
        client.get_profile(ACCESS_TOKEN)

    assert type(caught.value) is InstagramError
    assert caught.value.status == 404


@pytest.mark.parametrize(
    "body",
    [
        {"paging": {}},
        {"data": None},
        {"data": {"id": "1"}},
        {"data": ["1", "2"]},
        {"data": [{"id": "1"}, None]},
        ["not", "an", "object"],
    ],
)
def test_media_page_data_not_list_of_objects(client, requests_mock, body):
    requests_mock.get(MEDIA_URL, json=body)

    with pytest.raises(UpstreamUnavailableError):
        client.get_media_page(ACCESS_TOKEN)


@pytest.mark.parametrize(
    "error",
    [
        requests.exceptions.ReadTimeout,
        requests.exceptions.ConnectTimeout,
        requests.exceptions.ConnectionError,
        requests.exceptions.SSLError,
        requests.exceptions.ChunkedEncodingError,
    ],
)
def test_transport_errors(client, requests_mock, caplog, error):
    requests_mock.get(MEDIA_URL, exc=error)
    caplog.set_level(logging.INFO, logger="instagram")

    with pytest.raises(UpstreamUnavailableError) as caught:
        client.get_media_page(ACCESS_TOKEN)

    assert caught.value.retryable is True
    assert caught.value.status is None
    assert error.__name__ in caplog.records[-1].getMessage()


def test_timeout_passed_from_constructor(requests_mock):
    endpoints = Endpoints(AUTHORIZE_URL, TOKEN_URL, GRAPH_URL, "v25.0")
    client = InstagramClient(endpoints, CLIENT_ID, CLIENT_SECRET, timeout=(1.0, 2.0))
    adapter = requests_mock.get(MEDIA_URL, json={"data": []})

    client.get_media_page(ACCESS_TOKEN)

    assert adapter.last_request.timeout == (1.0, 2.0)


# Profile


@pytest.mark.parametrize("account_type", ["MEDIA_CREATOR", "Media_Creator"])
def test_get_profile_account_type(client, requests_mock, account_type):
    body = {
        "user_id": "17841400000000001",
        "id": 26000000000000002,
        "username": "owner.handle",
        "name": "Owner",
        "account_type": account_type,
        "profile_picture_url": "https://cdn.example/p.jpg?oh=1&oe=2",
        "media_count": 42,
    }
    adapter = requests_mock.get(ME_URL, json=body)

    profile = client.get_profile(ACCESS_TOKEN)
    request = adapter.last_request

    assert profile == {
        "user_id": "17841400000000001",
        "app_user_id": "26000000000000002",
        "username": "owner.handle",
        "account_type": "MEDIA_CREATOR",
        "name": "Owner",
        "profile_picture_url": "https://cdn.example/p.jpg?oh=1&oe=2",
        "media_count": 42,
    }
    assert sent_path(request) == "/v25.0/me"
    assert sent_query(request) == {
        "fields": f"{PROFILE_FIELDS},id",
        "access_token": ACCESS_TOKEN,
    }
    assert request.timeout == TIMEOUT


def test_get_profile_optional_fields_missing(client, requests_mock):
    body = {"user_id": 17841400000000001, "id": "26", "username": "owner"}
    requests_mock.get(ME_URL, json=body)

    profile = client.get_profile(ACCESS_TOKEN)

    assert profile["user_id"] == "17841400000000001"
    assert profile["account_type"] is None
    assert profile["name"] is None
    assert profile["media_count"] is None


@pytest.mark.parametrize(
    "body",
    [
        {"id": "26", "username": "owner"},
        {"user_id": "1784", "username": "owner"},
        {"user_id": "1784", "id": "26"},
    ],
)
def test_get_profile_wrong_shape(client, requests_mock, body):
    requests_mock.get(ME_URL, json=body)

    with pytest.raises(UpstreamUnavailableError):
        client.get_profile(ACCESS_TOKEN)


# Media pages


def register_feed(requests_mock: Any, total: int) -> Any:
    """Serve a feed of `total` posts in pages of 100, linked by `paging.next`."""

    def page(request: Any, context: Any) -> dict[str, Any]:
        start = int(sent_query(request).get("after", "0"))
        ids = range(start, min(start + 100, total))
        body: dict[str, Any] = {
            "data": [{"id": str(i), "media_type": "IMAGE"} for i in ids],
            "paging": {"cursors": {"before": "b", "after": str(start + 100)}},
        }
        if start + 100 < total:
            body["paging"]["next"] = (
                f"{MEDIA_URL}?access_token={ACCESS_TOKEN}&limit=100&after={start + 100}"
            )
        return body

    return requests_mock.get(MEDIA_URL, json=page)


def test_get_media_page_first_request(client, requests_mock):
    adapter = register_feed(requests_mock, 250)

    page = client.get_media_page(ACCESS_TOKEN)
    request = adapter.last_request

    assert len(page.items) == 100
    assert page.next_url is not None
    assert request.method == "GET"
    assert sent_path(request) == "/v25.0/me/media"
    assert sent_query(request) == {
        "fields": MEDIA_FIELDS,
        "limit": "100",
        "access_token": ACCESS_TOKEN,
    }
    assert request.timeout == TIMEOUT


def test_get_media_page_last_page_has_no_next(client, requests_mock):
    register_feed(requests_mock, 30)

    page = client.get_media_page(ACCESS_TOKEN)

    assert page.next_url is None


def test_get_media_page_follows_next_as_is(client, requests_mock):
    adapter = requests_mock.get(MEDIA_URL, json={"data": []})
    next_url = f"{MEDIA_URL}?access_token={ACCESS_TOKEN}&limit=100&after=QVFI"

    client.get_media_page(ACCESS_TOKEN, url=next_url)

    assert adapter.last_request.url == next_url


def test_get_media_page_adds_missing_token(client, requests_mock):
    adapter = requests_mock.get(MEDIA_URL, json={"data": []})

    client.get_media_page(ACCESS_TOKEN, url=f"{MEDIA_URL}?limit=100&after=QVFI")

    assert sent_query(adapter.last_request) == {
        "limit": "100",
        "after": "QVFI",
        "access_token": ACCESS_TOKEN,
    }


@pytest.mark.parametrize(
    "next_url",
    [
        "https://evil.example/v25.0/me/media?after=x",
        "http://graph.instagram.com/v25.0/me/media?after=x",
        "https://graph.instagram.com:8443/v25.0/me/media?after=x",
        "https://graph.instagram.com.evil.example/v25.0/me/media",
        "https://graph.instagram.com@evil.example/v25.0/me/media",
        "/v25.0/me/media?after=x",
    ],
)
def test_get_media_page_rejects_other_host(client, requests_mock, next_url):
    adapter = requests_mock.register_uri(ANY, ANY, json={"data": []})

    with pytest.raises(InstagramError) as caught:
        client.get_media_page(ACCESS_TOKEN, url=next_url)

    assert type(caught.value) is InstagramError
    assert adapter.call_count == 0
    assert requests_mock.call_count == 0
    assert "after=" not in caught.value.message


def test_get_media_page_accepts_explicit_default_port(client, requests_mock):
    adapter = requests_mock.register_uri(ANY, ANY, json={"data": []})

    client.get_media_page(
        ACCESS_TOKEN, url="https://GRAPH.instagram.com:443/v25.0/me/media"
    )

    assert adapter.call_count == 1


@pytest.mark.parametrize(
    ("total", "max_posts", "calls"),
    [
        (1000, 1, 1),
        (1000, 100, 1),
        (1000, 101, 2),
        (1000, 250, 3),
        (1000, 500, 5),
        (150, 500, 2),
        (0, 500, 1),
    ],
)
def test_iter_media_paging(client, requests_mock, total, max_posts, calls):
    adapter = register_feed(requests_mock, total)

    items = client.iter_media(ACCESS_TOKEN, max_posts)

    assert len(items) == min(total, max_posts)
    assert [item["id"] for item in items] == [str(i) for i in range(len(items))]
    assert adapter.call_count == calls
    assert adapter.call_count == max(1, math.ceil(min(total, max_posts) / 100))


def test_iter_media_zero_posts(client, requests_mock):
    adapter = register_feed(requests_mock, 10)

    assert client.iter_media(ACCESS_TOKEN, 0) == []
    assert adapter.call_count == 0


def test_iter_media_stops_on_repeated_next(client, requests_mock):
    next_url = f"{MEDIA_URL}?access_token={ACCESS_TOKEN}&after=same"
    body = {"data": [{"id": "1"}], "paging": {"next": next_url}}
    adapter = requests_mock.get(MEDIA_URL, json=body)

    items = client.iter_media(ACCESS_TOKEN, 500)

    assert adapter.call_count == 2
    assert len(items) == 2


def test_iter_media_stops_on_empty_page_with_next(client, requests_mock):
    body = {"data": [], "paging": {"next": f"{MEDIA_URL}?after=x"}}
    adapter = requests_mock.get(MEDIA_URL, json=body)

    assert client.iter_media(ACCESS_TOKEN, 500) == []
    assert adapter.call_count == 1


# Single media object


def test_get_media_request(client, requests_mock):
    adapter = requests_mock.get(
        f"{GRAPH_URL}/v25.0/17895695668004550", json={"id": "1"}
    )

    media = client.get_media(ACCESS_TOKEN, "17895695668004550")
    request = adapter.last_request

    assert media == {"id": "1"}
    assert sent_path(request) == "/v25.0/17895695668004550"
    assert sent_query(request) == {"fields": MEDIA_FIELDS, "access_token": ACCESS_TOKEN}
    assert request.timeout == TIMEOUT


@pytest.mark.parametrize(
    "media_id",
    ["", "../me", "1/children", "1?fields=id", "a" * 65, "17 89", "média", None, 17],
)
def test_get_media_invalid_id(client, requests_mock, media_id):
    with pytest.raises(ValueError):
        client.get_media(ACCESS_TOKEN, media_id)

    assert requests_mock.call_count == 0


# Logging and secrets


def test_request_logs_one_info_line(client, requests_mock, caplog):
    register_feed(requests_mock, 10)
    caplog.set_level(logging.DEBUG)

    client.get_media_page(ACCESS_TOKEN)
    records = [r for r in caplog.records if r.name == "instagram"]

    assert len(records) == 1
    assert records[0].levelno == logging.INFO
    assert (
        records[0].getMessage().startswith("Instagram GET /v25.0/me/media -> 200 in ")
    )
    assert "?" not in records[0].getMessage()


def test_secrets_absent_from_logs_and_errors(client, requests_mock, caplog):
    caplog.set_level(logging.DEBUG)
    echoed = f"Invalid OAuth access token {ACCESS_TOKEN} for app {CLIENT_SECRET}"
    requests_mock.post(
        TOKEN_URL,
        [
            {"json": {"access_token": ACCESS_TOKEN, "user_id": 1}},
            {
                "status_code": 400,
                "json": exchange_error(f"Code {CODE} was already used"),
            },
        ],
    )
    requests_mock.get(
        f"{GRAPH_URL}/access_token",
        status_code=400,
        json=graph_error(190, message=echoed),
    )
    requests_mock.get(
        f"{GRAPH_URL}/refresh_access_token", status_code=503, text="<html>"
    )
    leaky = requests.exceptions.ConnectionError(
        f"Max retries exceeded with url: /v25.0/me?access_token={ACCESS_TOKEN}"
    )
    requests_mock.get(ME_URL, exc=leaky)
    requests_mock.get(MEDIA_URL, status_code=429, json=graph_error(4, message=echoed))

    calls = [
        lambda: client.exchange_code(f"{CODE}#_", REDIRECT_URI),
        lambda: client.exchange_code(CODE, REDIRECT_URI),
        lambda: client.exchange_long_lived(ACCESS_TOKEN),
        lambda: client.refresh(ACCESS_TOKEN),
        lambda: client.get_profile(ACCESS_TOKEN),
        lambda: client.get_media_page(ACCESS_TOKEN),
        lambda: client.get_media_page(
            ACCESS_TOKEN, url=f"https://evil.example/?access_token={ACCESS_TOKEN}"
        ),
    ]
    texts = []
    for call in calls:
        try:
            call()
        except InstagramError as err:
            texts.append(str(err))
            texts.append("".join(traceback.format_exception(err)))
    # requests_mock's own DEBUG line shows the full URL, as urllib3's does in
    # production (logs.RedactingFilter masks those), so it is left out here.
    logged = [
        r.getMessage() for r in caplog.records if r.name != "requests_mock.adapter"
    ]

    assert len(texts) == 12
    assert len([r for r in caplog.records if r.name == "instagram"]) == 6
    for secret in SECRETS:
        assert not [text for text in texts if secret in text], secret
        assert not [line for line in logged if secret in line], secret
