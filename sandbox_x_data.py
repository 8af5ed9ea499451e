"""The X sandbox's made-up accounts and posts, rendered in X API v2's format.

Everything here is deterministic, so every gunicorn worker serves the same posts.
A post carries only `id`, `text` and `edit_history_tweet_ids` unless the request
names more fields, media and users come back in `includes` when expansions ask
for them, and `text` has `&`, `<` and `>` HTML-escaped, as X sends it.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

OWNER_ID = "1800000000000000001"
OWNER = {"id": OWNER_ID, "username": "sandbox_owner", "name": "Sandbox Owner 🏖️"}
OTHER_USERS = [
    {"id": "1800000000000000002", "username": "cafe_lisboa", "name": "Café Lisboa"},
    {"id": "1800000000000000003", "username": "tokyo_nights", "name": "東京ナイト"},
    {"id": "1800000000000000004", "username": "sea_photos", "name": "Sea Photos"},
    {"id": "1800000000000000005", "username": "noor_ar", "name": "نور"},
    {"id": "1800000000000000006", "username": "dev_notes", "name": "Dev <Notes> & Co"},
]
USERS = [OWNER, *OTHER_USERS]
OWNER_POST_COUNT = 60
NEWEST_POST_AT = datetime(2026, 6, 22, 10, 45, tzinfo=UTC)

TWEET_FIELDS = frozenset(
    "article attachments author_id card_uri community_id context_annotations "
    "conversation_id created_at display_text_range edit_controls "
    "edit_history_tweet_ids entities geo id in_reply_to_user_id lang "
    "non_public_metrics note_tweet organic_metrics possibly_sensitive "
    "promoted_metrics public_metrics referenced_tweets reply_settings scopes "
    "source text withheld".split()
)
MEDIA_FIELDS = frozenset(
    "alt_text duration_ms height media_key non_public_metrics organic_metrics "
    "preview_image_url promoted_metrics public_metrics type url variants "
    "width".split()
)
USER_FIELDS = frozenset(
    "affiliation connection_status created_at description entities id location "
    "most_recent_tweet_id name pinned_tweet_id profile_banner_url "
    "profile_image_url protected public_metrics receives_your_dm subscription_type "
    "url username verified verified_type withheld".split()
)
# Only the first two are joined into `includes`. The sandbox accepts the others
# and leaves them out.
EXPANSIONS = frozenset(
    "attachments.media_keys author_id attachments.poll_ids edit_history_tweet_ids "
    "entities.mentions.username geo.place_id in_reply_to_user_id "
    "referenced_tweets.id referenced_tweets.id.author_id".split()
)
DEFAULT_TWEET_FIELDS = ("id", "text", "edit_history_tweet_ids")
DEFAULT_USER_FIELDS = ("id", "name", "username")
DEFAULT_MEDIA_FIELDS = ("media_key", "type")

# The owner's newest posts, one per case a client must handle:
# (text, media as (type, alt text), lang, kind, link).
_FEATURED: list[tuple[str, list[tuple[str, str | None]], str, str, str | None]] = [
    (
        "Golden hour at the pier 🌅 #sunset",
        [("photo", "A pier at sunset")],
        "en",
        "post",
        None,
    ),
    (
        "Three photos from Lisbon: Café da Manhã, crème brûlée & the old tram #Café",
        [("photo", "Coffee"), ("photo", None), ("photo", "A yellow tram")],
        "en",
        "post",
        None,
    ),
    ("Waves at Nazaré 🌊 #sea", [("video", None)], "en", "post", None),
    (
        "Cat vs. laser pointer 🐈",
        [("animated_gif", "A cat jumping")],
        "en",
        "post",
        None,
    ),
    ("東京の夜景がきれい 🌃 #東京", [("photo", "夜景")], "ja", "post", None),
    (
        "今天的晚餐：火锅 🍜 #美食",
        [("photo", None), ("video", None)],
        "zh",
        "post",
        None,
    ),
    ("غروب الشمس على البحر 🌅 #غروب", [("photo", "غروب")], "ar", "post", None),
    ("בוקר טוב מתל אביב ☀️ #בוקר", [], "iw", "post", None),
    ('<script>alert("post")</script>', [], "en", "post", None),
    (
        '"><img src=x onerror=alert(1)> & <b>not bold</b>',
        [("photo", None)],
        "en",
        "post",
        None,
    ),
    ("Line one\nLine two\n\n#weekend", [], "en", "post", None),
    (
        "Reading list for the weekend 📚",
        [],
        "en",
        "post",
        "https://example.com/articles?id=1&lang=en",
    ),
    ("@cafe_lisboa Thank you! The pastéis were perfect 🥐", [], "en", "reply", None),
    ("RT @sea_photos: Storm over the Atlantic 🌩️", [], "en", "retweet", None),
    ("Ladies + Gentlemen, it's 100% ~awesome~ (really!) 🎉", [], "en", "post", None),
]
_FILLER = [
    "Cafés of Porto, part {n} ☕ #cafe",
    "Trail run number {n} 🏃‍♀️ #running",
    "Garden update {n}: tomatoes everywhere 🍅 #garden",
    "Sunset {n} from the balcony #sunset",
    "Street photo, day {n} #street",
    "Rainy afternoon & a good book 📚",
]
_FILLER_MEDIA = ["photo", None, "photo", "video", "photo", None]
_LIKED = [
    ("cafe_lisboa", "Fresh pastéis de nata every morning ☕🥐", "photo"),
    ("tokyo_nights", "渋谷の交差点 🚦 #tokyo", "photo"),
    ("sea_photos", "Storm over the Atlantic 🌩️", "video"),
    ("noor_ar", "صباح الخير ☀️", None),
    ("dev_notes", 'Tip: escape <html> & quote "attributes" 🛡️', None),
    ("cafe_lisboa", "New terrace, same coffee #Lisboa", "photo"),
    ("tokyo_nights", "ラーメン 🍜 at 2 a.m.", "animated_gif"),
    ("sea_photos", "Low tide, long shadows", "photo"),
    ("dev_notes", "<script>alert('liked')</script>", None),
    ("noor_ar", "القهوة أولاً ☕", "photo"),
]
_LIKED_COUNT = 20
_SIZES = {"photo": (1200, 900), "video": (1280, 720), "animated_gif": (480, 270)}
_MEDIA_PREFIX = {"photo": "3", "video": "7", "animated_gif": "16"}

MediaUrl = Callable[[str], str]
"""Build the image URL for a media key or "profile_<username>"."""


@functools.cache
def owner_posts() -> tuple[dict[str, Any], ...]:
    """Return the owner's posts, newest first, as raw records."""
    posts = []
    for index in range(OWNER_POST_COUNT):
        if index < len(_FEATURED):
            text, media, lang, kind, link = _FEATURED[index]
        else:
            n = OWNER_POST_COUNT - index
            text = _FILLER[index % len(_FILLER)].format(n=n)
            media_type = _FILLER_MEDIA[index % len(_FILLER_MEDIA)]
            media = [(media_type, None)] if media_type else []
            lang, kind, link = "en", "post", None
        post_id = str(1940000000000000000 - index * 1000)
        moment = NEWEST_POST_AT - timedelta(hours=17 * index)
        posts.append(_record(post_id, OWNER_ID, text, media, lang, kind, link, moment))
    return tuple(posts)


@functools.cache
def liked_posts() -> tuple[dict[str, Any], ...]:
    """Return the posts the owner liked, most recently liked first."""
    by_name = {user["username"]: user for user in OTHER_USERS}
    posts = []
    for index in range(_LIKED_COUNT):
        name, text, media_type = _LIKED[index % len(_LIKED)]
        if index >= len(_LIKED):
            text = f"{text} (again)"
        media = [(media_type, None)] if media_type else []
        post_id = str(1939000000000000000 - index * 7000)
        moment = NEWEST_POST_AT - timedelta(hours=9 * index + 5)
        author_id = by_name[name]["id"]
        posts.append(
            _record(post_id, author_id, text, media, "und", "post", None, moment)
        )
    return tuple(posts)


def posts_by(user_id: str) -> list[dict[str, Any]]:
    """Return a user's posts, newest first."""
    every = list(owner_posts()) + list(liked_posts())
    return sorted(
        (post for post in every if post["author_id"] == user_id),
        key=lambda post: post["created_at"],
        reverse=True,
    )


def find_user(
    *, user_id: str | None = None, username: str | None = None
) -> dict | None:
    """Return the user with this id or username (ignoring case), or None."""
    for user in USERS:
        if user["id"] == user_id:
            return user
        if username is not None and user["username"].lower() == username.lower():
            return user
    return None


def find_media(media_key: str) -> dict[str, Any] | None:
    """Return the media record with this key, or None."""
    for post in owner_posts() + liked_posts():
        for media in post["media"]:
            if media["media_key"] == media_key:
                return media
    return None


def _record(
    post_id: str,
    author_id: str,
    text: str,
    media: list[tuple[str, str | None]],
    lang: str,
    kind: str,
    link: str | None,
    moment: datetime,
) -> dict[str, Any]:
    """Build a raw post: the text as the author typed it, plus its media."""
    records = []
    for position, (media_type, alt_text) in enumerate(media, start=1):
        key = f"{_MEDIA_PREFIX[media_type]}_{post_id[:-1]}{position}"
        width, height = _SIZES[media_type]
        records.append(
            {
                "media_key": key,
                "type": media_type,
                "alt_text": alt_text,
                "width": width,
                "height": height,
            }
        )
    return {
        "id": post_id,
        "author_id": author_id,
        "text": text,
        "media": records,
        "lang": lang,
        "kind": kind,
        "link": link,
        "created_at": moment,
        "metrics": _metrics(post_id),
    }


def _metrics(post_id: str) -> dict[str, int]:
    digest = hashlib.sha256(post_id.encode()).digest()
    return {
        "retweet_count": digest[0] % 40,
        "reply_count": digest[1] % 25,
        "like_count": digest[2] * 3,
        "quote_count": digest[3] % 8,
        "bookmark_count": digest[4] % 12,
        "impression_count": digest[5] * 97,
    }


def _short_link(seed: str) -> str:
    code = base64.b32encode(hashlib.sha256(seed.encode()).digest()).decode()
    return f"https://t.co/{code[:10].lower()}"


# Rendering ----------------------------------------------------------------------


def wire_text(post: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """Return the text as X sends it and its `entities.urls`.

    A link becomes a t.co link, and posts with media end with one more t.co
    link to the attachment, which carries the first `media_key`.
    """
    text = post["text"]
    urls: list[tuple[str, dict[str, Any]]] = []
    if post["link"]:
        short = _short_link(post["link"])
        text = f"{text} {short}"
        urls.append(
            (
                short,
                {
                    "expanded_url": post["link"],
                    "display_url": post["link"].split("://", 1)[1][:26],
                },
            )
        )
    if post["media"]:
        first = post["media"][0]
        short = _short_link(first["media_key"])
        author = find_user(user_id=post["author_id"]) or OWNER
        kind = "photo" if first["type"] == "photo" else "video"
        expanded = f"https://x.com/{author['username']}/status/{post['id']}/{kind}/1"
        text = f"{text} {short}"
        urls.append(
            (
                short,
                {
                    "expanded_url": expanded,
                    "display_url": f"pic.x.com/{short[-10:]}",
                    "media_key": first["media_key"],
                },
            )
        )
    escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    entities = []
    for short, details in urls:
        start = escaped.index(short)
        entities.append(
            {"start": start, "end": start + len(short), "url": short, **details}
        )
    return escaped, entities


def render_tweet(post: dict[str, Any], fields: set[str]) -> dict[str, Any]:
    """Render one post with the default fields plus those in `fields`."""
    text, urls = wire_text(post)
    wanted = set(DEFAULT_TWEET_FIELDS) | fields
    values: dict[str, Any] = {
        "id": post["id"],
        "text": text,
        "edit_history_tweet_ids": [post["id"]],
        "created_at": post["created_at"].strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        "author_id": post["author_id"],
        "lang": post["lang"],
        "conversation_id": post["id"],
        "possibly_sensitive": False,
        "reply_settings": "everyone",
        "public_metrics": dict(post["metrics"]),
        "entities": _entities(text, urls),
    }
    if post["media"]:
        values["attachments"] = {"media_keys": [m["media_key"] for m in post["media"]]}
    if post["kind"] == "reply":
        values["in_reply_to_user_id"] = OTHER_USERS[0]["id"]
        values["referenced_tweets"] = [
            {"type": "replied_to", "id": "1938000000000000001"}
        ]
    if post["kind"] == "retweet":
        values["referenced_tweets"] = [
            {"type": "retweeted", "id": "1938000000000000002"}
        ]
    if not values["entities"]:
        del values["entities"]
    # X leaves out a field a post lacks instead of sending null.
    return {name: value for name, value in values.items() if name in wanted}


def render_media(
    media: dict[str, Any], fields: set[str], media_url: MediaUrl
) -> dict[str, Any]:
    """Render a media record: photos have `url`, videos and GIFs a preview."""
    values: dict[str, Any] = {
        "media_key": media["media_key"],
        "type": media["type"],
        "width": media["width"],
        "height": media["height"],
    }
    if media["type"] == "photo":
        values["url"] = media_url(media["media_key"])
    else:
        values["preview_image_url"] = media_url(media["media_key"])
    if media["type"] == "video":
        values["duration_ms"] = 12000
    if media["alt_text"]:
        values["alt_text"] = media["alt_text"]
    wanted = set(DEFAULT_MEDIA_FIELDS) | fields
    return {name: value for name, value in values.items() if name in wanted}


def render_user(
    user: dict[str, Any], fields: set[str], media_url: MediaUrl
) -> dict[str, Any]:
    """Render a user with the default fields plus those in `fields`."""
    values = {
        **user,
        "profile_image_url": media_url(f"profile_{user['username']}"),
        "protected": False,
        "verified": False,
        "description": f"Made-up account @{user['username']} of ownfeed's X sandbox.",
    }
    wanted = set(DEFAULT_USER_FIELDS) | fields
    return {name: value for name, value in values.items() if name in wanted}


def render_posts(
    posts: list[dict[str, Any]],
    fields: dict[str, set[str]],
    media_url: MediaUrl,
) -> dict[str, Any]:
    """Render posts with `includes.media` and `includes.users` as expansions ask.

    `fields` maps "tweet.fields", "media.fields", "user.fields" and "expansions"
    to the names requested.
    """
    expansions = fields["expansions"]
    body: dict[str, Any] = {
        "data": [render_tweet(post, fields["tweet.fields"]) for post in posts]
    }
    includes: dict[str, list[dict[str, Any]]] = {}
    if "attachments.media_keys" in expansions:
        media = [m for post in posts for m in post["media"]]
        if media:
            includes["media"] = [
                render_media(m, fields["media.fields"], media_url) for m in media
            ]
    if "author_id" in expansions and posts:
        seen: list[str] = []
        for post in posts:
            if post["author_id"] not in seen:
                seen.append(post["author_id"])
        includes["users"] = [
            render_user(
                find_user(user_id=uid) or OWNER, fields["user.fields"], media_url
            )
            for uid in seen
        ]
    if includes:
        body["includes"] = includes
    return body


def _entities(text: str, urls: list[dict[str, Any]]) -> dict[str, Any]:
    entities: dict[str, Any] = {}
    hashtags = [
        {"start": m.start(), "end": m.end(), "tag": m.group(1)}
        for m in re.finditer(r"#(\w+)", text)
    ]
    mentions = [
        {"start": m.start(), "end": m.end(), "username": m.group(1)}
        for m in re.finditer(r"@(\w{1,15})", text)
    ]
    for name, values in (
        ("hashtags", hashtags),
        ("mentions", mentions),
        ("urls", urls),
    ):
        if values:
            entities[name] = values
    return entities


# Search -------------------------------------------------------------------------


def search(query: str) -> list[dict[str, Any]]:
    """Return every post matching a recent-search query, newest first.

    Supported operators: plain terms and "quoted phrases" (matched as text,
    ignoring case), `-term` to exclude, `from:username`, `has:media`,
    `has:images`, `has:videos` and `has:links`. Terms are combined with AND.
    """
    # NOTE: no OR or parentheses, and no 7-day window: the sandbox's posts
    # have fixed dates, so every one of them counts as recent.
    terms = re.findall(r'(-?)(?:"([^"]*)"|(\S+))', query)
    posts = sorted(
        owner_posts() + liked_posts(), key=lambda post: post["created_at"], reverse=True
    )
    return [post for post in posts if all(_matches(post, t) for t in terms)]


def _matches(post: dict[str, Any], term: tuple[str, str, str]) -> bool:
    negate, phrase, word = term
    value = (phrase or word).casefold()
    if word.startswith(("from:", "has:")):
        operator, _, argument = value.partition(":")
        if operator == "from":
            author = find_user(user_id=post["author_id"]) or {}
            found = author.get("username", "").casefold() == argument.lstrip("@")
        else:
            found = _has(post, argument)
    else:
        found = value in post["text"].casefold()
    return found != bool(negate)


def _has(post: dict[str, Any], what: str) -> bool:
    types = {media["type"] for media in post["media"]}
    if what == "media":
        return bool(types)
    if what == "images":
        return "photo" in types
    if what == "videos":
        return bool(types & {"video", "animated_gif"})
    if what == "links":
        return bool(post["link"])
    return False
