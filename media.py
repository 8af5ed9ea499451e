"""Stable, private image URLs: the owner's images served from ownfeed, in sizes.

Instagram's media URLs are signed CDN links that expire after a few days, and a
visitor's browser that loads them contacts Instagram. Here each still image of a
kept post is downloaded once, checked, kept under `instance/media/`, and served
in the configured widths, so pages keep working and visitors only contact this
server. Only posts in the kept feed and only the configured widths are served,
so the route is not an open proxy.
"""

from __future__ import annotations

import io
import logging
import os
import re
import stat
import tempfile
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

import requests
from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    g,
    request,
    send_file,
    url_for,
)
from PIL import Image, ImageOps, UnidentifiedImageError
from werkzeug.http import parse_range_header

from messages import shown_value
from token_store import file_lock

logger = logging.getLogger(__name__)

bp = Blueprint("media", __name__, url_prefix="/media")


@bp.before_request
def ignore_unusable_range() -> None:
    """Drop a Range header that is not one byte range, so the whole file is sent.

    Werkzeug responds with 416 to a header it cannot parse and to several
    ranges. A server may ignore a Range header and send the whole file, which
    every client can use.
    """
    value = request.environ.get("HTTP_RANGE")
    if value is None:
        return
    parsed = parse_range_header(value)
    if parsed is None or parsed.units != "bytes" or len(parsed.ranges) != 1:
        del request.environ["HTTP_RANGE"]


DEFAULT_WIDTHS = (150, 320, 640, 1080)
MAX_DOWNLOAD_BYTES = 20 * 1024 * 1024
# Larger images are rejected before decoding, against decompression bombs.
MAX_PIXELS = 50_000_000
DOWNLOAD_TIMEOUT = (3.05, 15.0)
BROWSER_CACHE_SECONDS = 30 * 24 * 3600
JPEG_QUALITY = 85
_ID = re.compile(r"[0-9]{1,32}")
# ASCII digits without a leading zero, so each size has exactly one URL.
_WIDTH = re.compile(r"[1-9][0-9]{0,4}")

_session = requests.Session()


class MediaError(Exception):
    """An image could not be downloaded or decoded; nothing was kept."""


class SourceExpired(MediaError):
    """The CDN returned 403 or 404: the signed URL expired or the file is gone."""


def media_folder() -> Path:
    return Path(current_app.instance_path) / "media"


def widths() -> tuple[int, ...]:
    return tuple(current_app.config.get("MEDIA_WIDTHS") or DEFAULT_WIDTHS)


# --- rewriting the feed ---------------------------------------------------


def proxied_post(post: dict[str, Any]) -> dict[str, Any]:
    """Return the post with every image URL on ownfeed and a `sizes` map added.

    A video's `media_url` becomes its cover: the video itself plays on
    Instagram through `permalink`.
    """
    public = dict(post)
    has_still = bool(post.get("thumbnail_url"))
    public["sizes"] = _sizes(post["id"], None) if has_still else {}
    largest = public["sizes"].get(str(max(widths()))) if has_still else None
    public["thumbnail_url"] = largest
    public["media_url"] = largest if post.get("media_url") or has_still else None
    public["children"] = [
        _proxied_child(post["id"], child) for child in post["children"]
    ]
    return public


def unproxied_post(post: dict[str, Any]) -> dict[str, Any]:
    """Return the post with Instagram's own URLs and empty `sizes` maps."""
    public = dict(post, sizes={})
    public["children"] = [dict(child, sizes={}) for child in post["children"]]
    return public


def _proxied_child(post_id: str, child: dict[str, Any]) -> dict[str, Any]:
    public = dict(child)
    has_still = bool(child.get("thumbnail_url"))
    public["sizes"] = _sizes(post_id, child["id"]) if has_still else {}
    largest = public["sizes"].get(str(max(widths()))) if has_still else None
    public["thumbnail_url"] = largest
    public["media_url"] = largest
    return public


def _sizes(post_id: str, child_id: str | None) -> dict[str, str]:
    ids = (post_id,) if child_id is None else (post_id, child_id)
    if all(part.isascii() and part.isdigit() for part in ids):
        # Digits need no quoting, so string formatting on one url_for per
        # request gives the same URLs: a page of 12 albums needs some 200,
        # and url_for costs about 10 µs each.
        prefix = f"{_media_prefix()}/{'/'.join(ids)}"
    elif child_id is None:
        template = url_for("media.image", post_id=post_id, width="0", _external=True)
        prefix = template.removesuffix("/0.jpg")
    else:
        template = url_for(
            "media.child_image",
            post_id=post_id,
            child_id=child_id,
            width="0",
            _external=True,
        )
        prefix = template.removesuffix("/0.jpg")
    return {str(width): f"{prefix}/{width}.jpg" for width in widths()}


def _media_prefix() -> str:
    """Return the absolute URL of the media routes for this request, built once."""
    prefix = g.get("ownfeed_media_prefix")
    if prefix is None:
        template = url_for("media.image", post_id="0", width="0", _external=True)
        prefix = g.ownfeed_media_prefix = template.removesuffix("/0/0.jpg")
    return prefix


@bp.app_template_filter("image_sources")
def image_sources(post: dict[str, Any]) -> dict[str, str | None]:
    """Return a tile's `src` (the first width of 320 or more) and its `srcset`."""
    sizes = sorted(
        (int(width), url) for width, url in (post.get("sizes") or {}).items()
    )
    if not sizes:
        return {"src": post.get("thumbnail_url"), "srcset": None}
    wide = [url for width, url in sizes if width >= 320]
    srcset = ", ".join(f"{url} {width}w" for width, url in sizes)
    return {"src": wide[0] if wide else sizes[-1][1], "srcset": srcset}


# --- routes ---------------------------------------------------------------


# The width is matched as text, not with the `int` converter, whose `\d+` also
# takes leading zeros and non-ASCII digits such as "١٥٠".
@bp.get("/<post_id>/<width>.jpg")
def image(post_id: str, width: str) -> Response:
    """Serve a kept post's still image at one of the configured widths."""
    return _serve(post_id, None, width)


@bp.get("/<post_id>/<child_id>/<width>.jpg")
def child_image(post_id: str, child_id: str, width: str) -> Response:
    """Serve an album child's still image at one of the configured widths."""
    return _serve(post_id, child_id, width)


def _serve(post_id: str, child_id: str | None, width_text: str) -> Response:
    # The app's 404 handler sends each description as the JSON error's message.
    for name, value in (("post id", post_id), ("child id", child_id)):
        if value is not None and not _ID.fullmatch(value):
            abort(
                404, description=_not_found(name, value, f"a {name} of up to 32 digits")
            )
    if not _WIDTH.fullmatch(width_text) or int(width_text) not in widths():
        *others, last = [str(width) for width in widths()]
        configured = f"{', '.join(others)} and {last}" if others else last
        valid = f"one of the configured widths, {configured}"
        abort(404, description=_not_found("width", width_text, valid))
    width = int(width_text)

    import media_sources

    # Checked on every request, so files of a post that left the feed (deleted
    # on Instagram, or past FEED_MAX_POSTS) are no longer served from disk.
    try:
        media_sources.still_url(media_sources.find_post(post_id), child_id)
    except media_sources.NotInFeed:
        abort(404, description=_not_in_feed(post_id, child_id))

    slot, sized = _image_paths(current_app.instance_path, post_id, child_id, width)
    # Marking fails when the file is missing, including when another request
    # evicted it after an earlier check.
    if not _mark_used(sized):
        try:
            source = media_sources.ensure_source(post_id, child_id, slot)
            _write_resized(source, sized, width)
        except media_sources.NotInFeed:
            abort(404, description=_not_in_feed(post_id, child_id))
        except MediaError as err:
            logger.warning(
                "Image %s/%s unavailable: %s", post_id, child_id or "post", err
            )
            # Imported here because images imports this module.
            from images import error_response

            reason = str(err).rstrip(".")
            message = f"{reason}. Nothing was kept, so a later request tries again."
            return error_response(502, "upstream_unavailable", message)
        enforce_limit(keep=sized)
        _mark_used(sized)

    response = send_file(
        sized,
        mimetype="image/jpeg",
        conditional=True,
        etag=True,
        max_age=BROWSER_CACHE_SECONDS,
    )
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@lru_cache(maxsize=4096)
def _image_paths(
    instance_path: str, post_id: str, child_id: str | None, width: int
) -> tuple[Path, Path]:
    """Return the folder of a still and the path of its resized copy.

    The paths are kept because pathlib interns each part of a new path. An
    interned string that dies leaves a deleted slot in the interpreter's table
    until the table is resized, which made a long-running worker's resident
    size grow by a step of about 1 MB.
    """
    slot = Path(instance_path) / "media" / post_id / (child_id or "post")
    return slot, slot / f"{width}.jpg"


def _not_found(name: str, value: str, valid: str) -> str:
    return (
        f"No image has the {name} {shown_value(value)}. Use {valid}, as in the "
        "URLs of a feed response's sizes."
    )


def _not_in_feed(post_id: str, child_id: str | None) -> str:
    image = (
        f"Post {post_id}" if child_id is None else f"Child {child_id} of post {post_id}"
    )
    return (
        f"{image} is not in the kept feed or has no still image. Use the URLs in a "
        "current feed response's sizes."
    )


# --- downloading and resizing ---------------------------------------------


def download_image(url: str, max_bytes: int | None = None) -> bytes:
    """Download an image, checking its size, content type and that it decodes.

    `max_bytes` defaults to MAX_DOWNLOAD_BYTES. Raises SourceExpired on 403 or
    404 and MediaError on anything else wrong.
    """
    if max_bytes is None:
        max_bytes = MAX_DOWNLOAD_BYTES
    if not url.startswith(("https://", "http://")):
        raise MediaError("The image URL is not http(s).")
    try:
        with _session.get(url, stream=True, timeout=DOWNLOAD_TIMEOUT) as response:
            if response.status_code in (403, 404):
                raise SourceExpired(f"The CDN returned HTTP {response.status_code}.")
            if response.status_code != 200:
                raise MediaError(f"The CDN returned HTTP {response.status_code}.")
            content_type = response.headers.get("Content-Type", "")
            if not content_type.startswith("image/"):
                raise MediaError(
                    f"The CDN sent {content_type or 'no content type'}, not an image."
                )
            body = _read_limited(response, max_bytes)
    except requests.RequestException as err:
        raise MediaError(
            f"Downloading the image failed ({type(err).__name__})."
        ) from None
    check_image(body)
    return body


def _read_limited(response: requests.Response, max_bytes: int) -> bytes:
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise MediaError(f"The image is {declared} bytes, over the {max_bytes} limit.")
    chunks = []
    total = 0
    for chunk in response.iter_content(64 * 1024):
        total += len(chunk)
        if total > max_bytes:
            raise MediaError(f"The image is over the {max_bytes} byte limit.")
        chunks.append(chunk)
    return b"".join(chunks)


def check_image(body: bytes) -> None:
    """Raise MediaError unless `body` decodes as a JPEG, PNG or WebP image.

    The whole image is decoded, because `verify()` checks little more than the
    header of a JPEG and lets a truncated one through.
    """
    try:
        with Image.open(io.BytesIO(body)) as probe:
            if probe.format not in ("JPEG", "PNG", "WEBP"):
                raise MediaError(f"The image format {probe.format} is not accepted.")
            if probe.width * probe.height > MAX_PIXELS:
                raise MediaError(
                    f"The image is {probe.width}x{probe.height}, too large."
                )
            probe.verify()
        with Image.open(io.BytesIO(body)) as image:
            image.load()
    except UnidentifiedImageError:
        raise MediaError(
            "The downloaded file is not a JPEG, PNG or WebP image."
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        # Pillow raises the error past 2 * MAX_IMAGE_PIXELS, and the warning
        # past MAX_IMAGE_PIXELS when warnings are turned into errors.
        raise MediaError(f"The image is too large: {err}") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise MediaError(f"The image could not be decoded ({err}).") from None


def resize(body: bytes, width: int) -> bytes:
    """Return a JPEG `width` pixels wide (never enlarged), upright by its EXIF data."""
    with Image.open(io.BytesIO(body)) as original:
        upright = ImageOps.exif_transpose(original)
        if upright.mode not in ("RGB", "L"):
            upright = _flatten(upright)
        if upright.width > width:
            height = max(1, round(upright.height * width / upright.width))
            upright = upright.resize((width, height), Image.Resampling.LANCZOS)
        output = io.BytesIO()
        upright.save(
            output, "JPEG", quality=JPEG_QUALITY, optimize=True, progressive=True
        )
        return output.getvalue()


def _flatten(image: Image.Image) -> Image.Image:
    """Put an image with transparency on white, as JPEG has no alpha."""
    rgba = image.convert("RGBA")
    background = Image.new("RGB", rgba.size, (255, 255, 255))
    background.paste(rgba, mask=rgba.getchannel("A"))
    return background


def _write_resized(source: Path, sized: Path, width: int) -> None:
    """Write the sized copy, or remove a source that does not decode and raise."""
    with file_lock(sized):
        if sized.exists():
            return
        if not _mark_used(source):
            raise MediaError(
                "The downloaded image was evicted before it was resized. Try again."
            )
        try:
            data = resize(source.read_bytes(), width)
        except (Image.DecompressionBombError, OSError, SyntaxError, ValueError) as err:
            source.unlink(missing_ok=True)
            raise MediaError(f"The kept image could not be decoded ({err}).") from None
        write_bytes_atomic(sized, data)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data`, so a reader never sees a partial image."""
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as temp:
            temp.write(data)
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


# --- disk limit -----------------------------------------------------------


def _mark_used(path: Path) -> bool:
    """Set the file's access time to now, or return False when it does not exist.

    Eviction goes by access time. The modification time is left alone, because
    the ETag and Last-Modified headers are built from it.
    """
    try:
        status = path.stat()
        os.utime(path, ns=(time.time_ns(), status.st_mtime_ns))
    except FileNotFoundError:
        return False
    return True


def enforce_limit(keep: Path | None = None) -> None:
    """Evict the least recently used files until the folder fits MEDIA_CACHE_MAX_MB.

    `keep`, the file about to be served, counts towards the total but is never
    evicted.
    """
    limit = current_app.config.get("MEDIA_CACHE_MAX_MB", 500) * 1024 * 1024
    folder = media_folder()
    total = 0
    candidates = []
    for path in folder.rglob("*"):
        if path.name.startswith(".") or path.suffix == ".lock":
            continue
        try:
            status = path.stat()
        except FileNotFoundError:
            continue  # Another request evicted it meanwhile.
        if not stat.S_ISREG(status.st_mode):
            continue
        total += status.st_size
        if path != keep:
            candidates.append((status.st_atime_ns, status.st_size, path))
    if total <= limit:
        return
    for _, size, path in sorted(candidates):
        path.unlink(missing_ok=True)
        total -= size
        logger.info("Evicted %s from the media cache", path.relative_to(folder))
        if total <= limit:
            break
