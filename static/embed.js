/*
 * ownfeed embed script: renders the owner's Instagram posts into every
 * <div data-ownfeed>, and X posts into every <div data-ownfeed-x>.
 *
 *   <div data-ownfeed data-limit="12" data-q="#travel" data-type="image,video"></div>
 *   <div data-ownfeed-x data-view="timeline" data-exclude="replies"></div>
 *   <div data-ownfeed-x data-view="search" data-q="#ownfeed" data-limit="5"></div>
 *   <script src="https://feed.example.com/embed.js" async></script>
 *
 * data-view is timeline (the default), search or liked. data-q is the X search
 * query for search, and a local filter like /images' q for the other views.
 * data-exclude (replies, retweets or both) applies to the timeline.
 *
 * The markup matches templates/feed/grid.html and templates/feed/tweets.html.
 * Text and URLs from the API reach the page only through textContent and
 * setAttribute, and only http(s) URLs are used. Each div gets
 * data-ownfeed-state: "loading", then "loaded" or "error".
 */
(function () {
  "use strict";

  const script =
    document.currentScript || document.querySelector('script[src$="/embed.js"]');
  if (!script) {
    return;
  }
  // The folder embed.js is served from, so ownfeed may live under a path prefix.
  const base = new URL(".", script.src);
  const TYPE_WORDS = { VIDEO: "video", CAROUSEL_ALBUM: "album" };

  function httpUrl(value) {
    try {
      const url = new URL(value);
      return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
    } catch (err) {
      return null;
    }
  }

  function altText(post) {
    const caption = typeof post.caption === "string" ? post.caption.trim() : "";
    if (caption) {
      const first = caption.split(/\r\n|[\n\r\v\f\x1c-\x1e\x85\u2028\u2029]/)[0].trim();
      const chars = Array.from(first);
      return chars.length <= 120 ? first : chars.slice(0, 119).join("") + "…";
    }
    const kind = TYPE_WORDS[post.media_type] || "photo";
    const date = String(post.timestamp || "").slice(0, 10);
    return date ? `Instagram ${kind} from ${date}` : `Instagram ${kind}`;
  }

  // Each tile is about a third of a phone screen, or 20rem at most.
  const GRID_SIZES = "(max-width: 40rem) 33vw, 20rem";

  // Turns the `sizes` map (width -> URL on ownfeed) into sorted [width, url] pairs.
  function sizeList(sizes) {
    if (!sizes || typeof sizes !== "object") {
      return [];
    }
    return Object.keys(sizes)
      .map((width) => [parseInt(width, 10), httpUrl(sizes[width])])
      .filter(([width, url]) => width > 0 && url)
      .sort((a, b) => a[0] - b[0]);
  }

  // The `src` for browsers without srcset: the first width of 320 or more.
  function pickSource(sizes) {
    const wide = sizes.find(([width]) => width >= 320);
    return (wide || sizes[sizes.length - 1])[1];
  }

  function renderItem(post) {
    const type = String(post.media_type || "image")
      .toLowerCase()
      .replace(/[^a-z_]/g, "");
    const link = document.createElement("a");
    link.className = `ownfeed-item ownfeed-${type}`;
    const permalink = httpUrl(post.permalink);
    if (permalink) {
      link.setAttribute("href", permalink);
    }
    link.setAttribute("target", "_blank");
    link.setAttribute("rel", "noopener noreferrer");
    link.setAttribute("data-id", String(post.id));

    const sizes = sizeList(post.sizes);
    const src = sizes.length ? pickSource(sizes) : httpUrl(post.thumbnail_url);
    if (src) {
      const img = document.createElement("img");
      img.setAttribute("src", src);
      if (sizes.length) {
        img.setAttribute("srcset", sizes.map(([w, url]) => `${url} ${w}w`).join(", "));
        img.setAttribute("sizes", GRID_SIZES);
      }
      img.setAttribute("loading", "lazy");
      img.setAttribute("decoding", "async");
      img.setAttribute("width", "320");
      img.setAttribute("height", "320");
      img.setAttribute("alt", altText(post));
      link.appendChild(img);
    } else {
      const missing = document.createElement("span");
      missing.className = "ownfeed-missing";
      missing.textContent = altText(post);
      link.appendChild(missing);
    }
    return link;
  }

  async function fetchPage(url) {
    const response = await fetch(url, { credentials: "omit" });
    if (!response.ok) {
      // ownfeed's JSON error body has a code (such as not_connected) and a message.
      const body = await response.json().catch(() => ({}));
      const reason = body.error ? `: ${body.error.code}: ${body.error.message}` : "";
      throw new Error(`GET ${url} returned HTTP ${response.status}${reason}`);
    }
    return response.json();
  }

  // Follow paging.next only to the server this script came from.
  function nextUrl(page) {
    const next = httpUrl(page.paging && page.paging.next);
    return next && new URL(next).origin === base.origin ? next : null;
  }

  function appendPage(grid, page) {
    for (const post of Array.isArray(page.data) ? page.data : []) {
      grid.appendChild(renderItem(post));
    }
  }

  // Adds a "More posts" button that loads `url` and hands each page to `append`.
  function addMoreButton(container, url, append) {
    const button = document.createElement("button");
    button.setAttribute("type", "button");
    button.className = "ownfeed-more";
    button.textContent = "More posts";
    button.addEventListener("click", async () => {
      button.disabled = true;
      try {
        const page = await fetchPage(url);
        append(page);
        url = nextUrl(page);
        if (!url) {
          button.remove();
        }
      } catch (err) {
        console.warn("ownfeed: loading more posts failed:", err);
      }
      button.disabled = false;
    });
    container.appendChild(button);
  }

  async function render(container) {
    container.setAttribute("data-ownfeed-state", "loading");
    const url = new URL("images", base);
    url.searchParams.set("format", "json");
    for (const name of ["limit", "q", "type"]) {
      const value = container.getAttribute(`data-${name}`);
      if (value) {
        url.searchParams.set(name, value);
      }
    }
    const grid = document.createElement("div");
    grid.className = "ownfeed-grid";
    container.textContent = "";
    container.appendChild(grid);

    try {
      const page = await fetchPage(url.href);
      appendPage(grid, page);
      const next = nextUrl(page);
      if (next) {
        addMoreButton(container, next, (more) => appendPage(grid, more));
      }
      container.setAttribute("data-ownfeed-state", "loaded");
    } catch (err) {
      // Visitors see an empty grid; the reason is for the site owner's console.
      console.warn("ownfeed: loading posts failed:", err);
      container.setAttribute("data-ownfeed-state", "error");
    }
  }

  // --- X posts -------------------------------------------------------------

  const X_PATHS = { timeline: "tweets", search: "tweets/search", liked: "tweets/liked" };

  function textOf(value) {
    return typeof value === "string" ? value : "";
  }

  function newElement(tag, className, text) {
    const element = document.createElement(tag);
    if (className) {
      element.className = className;
    }
    if (text !== undefined) {
      element.textContent = text;
    }
    return element;
  }

  function setLinkTarget(link, href) {
    if (href) {
      link.setAttribute("href", href);
    }
    link.setAttribute("target", "_blank");
    link.setAttribute("rel", "noopener noreferrer");
  }

  function renderAuthor(author) {
    const byline = newElement("div", "ownfeed-tweet-author");
    const avatar = httpUrl(author.profile_image_url);
    if (avatar) {
      const img = document.createElement("img");
      img.setAttribute("src", avatar);
      img.setAttribute("loading", "lazy");
      img.setAttribute("decoding", "async");
      img.setAttribute("width", "32");
      img.setAttribute("height", "32");
      img.setAttribute("alt", "");
      byline.appendChild(img);
    }
    byline.appendChild(newElement("span", "ownfeed-tweet-name", textOf(author.name)));
    const handle = textOf(author.username);
    byline.appendChild(
      newElement("span", "ownfeed-tweet-handle", handle ? `@${handle}` : "")
    );
    return byline;
  }

  // A photo's still image is its `url`, and a video's or GIF's is its preview.
  function renderMedia(media, permalink) {
    const box = newElement("div", "ownfeed-tweet-media");
    for (const item of media) {
      if (!item || typeof item !== "object") {
        continue;
      }
      const type = textOf(item.type).toLowerCase().replace(/[^a-z_]/g, "");
      const still = httpUrl(type === "photo" ? item.url : item.preview_image_url);
      if (!still) {
        continue;
      }
      const link = newElement("a", `ownfeed-tweet-${type}`);
      setLinkTarget(link, permalink);
      const img = document.createElement("img");
      img.setAttribute("src", still);
      img.setAttribute("loading", "lazy");
      img.setAttribute("decoding", "async");
      img.setAttribute("width", "320");
      img.setAttribute("height", "180");
      img.setAttribute("alt", textOf(item.alt_text) || "Image attached to the post");
      link.appendChild(img);
      box.appendChild(link);
    }
    return box;
  }

  function renderTweet(tweet) {
    const item = newElement("li", "ownfeed-tweet");
    item.setAttribute("data-id", String(tweet.id));
    const author = tweet.author && typeof tweet.author === "object" ? tweet.author : {};
    item.appendChild(renderAuthor(author));
    item.appendChild(newElement("p", "ownfeed-tweet-text", textOf(tweet.text)));

    const permalink = httpUrl(tweet.url);
    if (Array.isArray(tweet.media) && tweet.media.length) {
      item.appendChild(renderMedia(tweet.media, permalink));
    }

    const created = textOf(tweet.created_at);
    const date = newElement("a", "ownfeed-tweet-date");
    setLinkTarget(date, permalink);
    const time = newElement("time", "", created.slice(0, 10));
    time.setAttribute("datetime", created);
    date.appendChild(time);
    item.appendChild(date);
    return item;
  }

  function appendTweets(list, page) {
    for (const tweet of Array.isArray(page.data) ? page.data : []) {
      if (tweet && typeof tweet === "object") {
        list.appendChild(renderTweet(tweet));
      }
    }
  }

  // Returns the JSON URL for a data-ownfeed-x div, or throws when its attributes
  // cannot make one.
  function tweetsUrl(container) {
    const view = container.getAttribute("data-view") || "timeline";
    if (!Object.prototype.hasOwnProperty.call(X_PATHS, view)) {
      throw new Error(`data-view must be timeline, search or liked; got "${view}"`);
    }
    const query = (container.getAttribute("data-q") || "").trim();
    if (view === "search" && !query) {
      throw new Error('data-view="search" needs data-q, the X search query');
    }
    const url = new URL(X_PATHS[view], base);
    url.searchParams.set("format", "json");
    const limit = container.getAttribute("data-limit");
    if (limit) {
      url.searchParams.set("limit", limit);
    }
    if (query) {
      url.searchParams.set("q", query);
    }
    const exclude = container.getAttribute("data-exclude");
    if (exclude && view === "timeline") {
      url.searchParams.set("exclude", exclude);
    }
    return url.href;
  }

  async function renderTweets(container) {
    container.setAttribute("data-ownfeed-state", "loading");
    const list = newElement("ol", "ownfeed-tweets");
    container.textContent = "";
    container.appendChild(list);

    try {
      const page = await fetchPage(tweetsUrl(container));
      appendTweets(list, page);
      const next = nextUrl(page);
      if (next) {
        addMoreButton(container, next, (more) => appendTweets(list, more));
      }
      container.setAttribute("data-ownfeed-state", "loaded");
    } catch (err) {
      // Visitors see an empty list; the reason is for the site owner's console.
      console.warn("ownfeed: loading X posts failed:", err);
      container.setAttribute("data-ownfeed-state", "error");
    }
  }

  // --- start ----------------------------------------------------------------

  function addStylesheet() {
    if (document.querySelector("link[data-ownfeed-css]")) {
      return;
    }
    const link = document.createElement("link");
    link.setAttribute("rel", "stylesheet");
    link.setAttribute("href", new URL("static/ownfeed.css", base).href);
    link.setAttribute("data-ownfeed-css", "");
    (document.head || document.documentElement).appendChild(link);
  }

  function start() {
    addStylesheet();
    // A div that already has a state was claimed by another copy of this script.
    for (const container of document.querySelectorAll("div[data-ownfeed]")) {
      if (!container.hasAttribute("data-ownfeed-state")) {
        render(container);
      }
    }
    for (const container of document.querySelectorAll("div[data-ownfeed-x]")) {
      if (!container.hasAttribute("data-ownfeed-state")) {
        renderTweets(container);
      }
    }
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
