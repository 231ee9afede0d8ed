"""Generated article pages whose main text is known, built like the pages real CMSes serve.

No real pages are kept in the repository: a public set of real article pages
(the 181 of scrapinghub's article-extraction-benchmark) is third-party news
text, and its HTML is stored gzipped, so none of it could be read or kept
here.  These pages are generated instead, from the markup of four kinds of
site as they are commonly served with scripts off:

- **wordpress** — a WordPress theme's single post: skip link, site header
  and primary menu, `article.hentry` with `.entry-content` made of
  `wp-block-*` blocks, Jetpack's share buttons, "Like this:" and related
  posts appended *inside* `.entry-content` (as Jetpack does), entry footer
  with categories and tags, author bio, post navigation, a server-rendered
  comment thread on some posts (`ol.comment-list`) with the reply form, a
  widget sidebar (recent posts, recent comments, archives, categories), the
  Cookie Notice plugin's banner, the emoji and embed scripts inline.
- **news** — a newspaper article: a consent banner, masthead with a
  mega-menu, breaking-news ticker, breadcrumb, headline and standfirst,
  byline, share tools, lead image with caption and credit, body text blocks
  with in-article ad slots, "Read more:" links, an embedded tweet and an
  inline newsletter box, related topics, comments that load only by script
  (as most news sites do: no comment text in the HTML), "More on this
  story" teasers, a "Most read" sidebar and a footer of link columns.
- **ghost** — a Ghost blog post: `gh-head` navigation with sign-in and
  subscribe, tag, title, excerpt, byline, feature image, `gh-content` with
  Koenig cards (image, bookmark cards that preview other pages), script-only
  comments, "read more" post cards and the subscribe call to action.
- **app** — a news site rendered by a JavaScript framework with CSS-in-JS:
  hashed class names (`css-1x2y3z`) instead of words, the article in
  `section[name=articleBody]`, "Advertisement" slots and "Skip advertisement"
  links between its paragraphs, "More in" and "Trending" lists that no class
  name gives away, and the page's data as a JSON blob in a script.
- **bare** — a hand-written page: a line of links, the article, a footer.

In every layout some paragraphs carry links on a few of their words, as
articles do.

The article's own text (the truth a perfect extractor returns) is the body:
paragraphs, subheadings, lists, quotes and tables.  Headline, standfirst,
captions, bylines, embedded posts and everything around the article are not.
Words come from a fixed vocabulary, mixed with English function words at
about the rate real prose has them, which text-density heuristics rely on.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from html import escape

LAYOUTS = ("wordpress", "news", "app", "ghost", "bare")
_LAYOUT_WEIGHTS = (30, 25, 20, 10, 15)

FUNCTION_WORDS = """
the the the of of and and to to a a in in that is was it for on with as he she they
be at by this had not are but from or have an which one you were her all there would
their we him been has when who will more no if out so what up its about into than them
can only other some could these may then do first any my now such like our over even
most after also did many before must through back where much your way well down should
because each just those how too very still here between both being under while might
""".split()  # noqa: SIM905

CONTENT_WORDS = """
people year time government company city council report study market school health
water energy price police court family children plan project policy team research
minister month week service support change growth budget officials residents workers
scientists engineers investors voters readers visitors community business industry
hospital university library museum river harbour bridge railway station festival
season weather election campaign decision evidence result system network data model
agreement president director leader member group board committee program process
said says told found showed reported announced expected raised reduced built opened
closed launched tested measured published approved rejected delayed extended improved
increased warned argued added explained described confirmed suggested agreed planned
quickly slowly recently nearly largely mainly partly roughly sharply steadily widely
local national regional global digital annual public private early late major minor
central northern southern eastern western coastal rural urban modern historic rapid
new old large small high low long short strong clear difficult important possible
""".split()  # noqa: SIM905

NAMES = """
Ana Ben Chloe David Elena Farid Grace Hugo Isla James Kemal Lena Marco Nadia Owen
Priya Quentin Rosa Samir Tara Umar Vera Wei Yusuf Zoe Morgan Patel Nguyen Okafor
Schmidt Rossi Kowalski Haddad Larsen Moreau Tanaka Silva Murphy Fischer Novak
""".split()  # noqa: SIM905

SECTIONS = """
News World Business Technology Science Health Sport Culture Travel Opinion Politics
Climate Money Education Lifestyle Video Podcasts Weather Local Arts Books Food
""".split()  # noqa: SIM905

COOKIE_TEXT = (
    "We and our partners store and/or access information on a device, such as cookies, "
    "and process personal data, such as unique identifiers and standard information sent "
    "by a device, for personalised ads and content, ad and content measurement, audience "
    "insights and product development."
)


@dataclass(frozen=True, slots=True)
class Page:
    """A generated page and the text a perfect extractor would return."""

    html: bytes
    url: str
    main_text: str
    layout: str


@dataclass(frozen=True, slots=True)
class _Block:
    kind: str  # p, h2, ul, quote, table
    texts: tuple[str, ...]


class ArticlePages:
    """Generates varied article pages from one seeded random source."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    # --- words ------------------------------------------------------------------------------

    def word(self) -> str:
        rng = self.rng
        roll = rng.random()
        if roll < 0.45:
            return rng.choice(FUNCTION_WORDS)
        if roll < 0.48:
            return str(rng.choice((rng.randint(2, 99), rng.randint(1900, 2024))))
        if roll < 0.52:
            return rng.choice(NAMES)
        return rng.choice(CONTENT_WORDS)

    def sentence(self, low: int = 8, high: int = 26) -> str:
        words = [self.word() for _ in range(self.rng.randint(low, high))]
        if len(words) > 8 and self.rng.random() < 0.4:
            words[self.rng.randint(3, len(words) - 4)] += ","
        text = " ".join(words)
        text = text[0].upper() + text[1:]
        if self.rng.random() < 0.12:
            return f"“{text},” {self.rng.choice(NAMES)} {self.rng.choice(NAMES)} said."
        return text + self.rng.choice("........?")

    def paragraph(self, low: int = 2, high: int = 5) -> str:
        return " ".join(self.sentence() for _ in range(self.rng.randint(low, high)))

    def title(self, low: int = 5, high: int = 11) -> str:
        text = " ".join(self.word() for _ in range(self.rng.randint(low, high)))
        return text[0].upper() + text[1:]

    def name(self) -> str:
        return f"{self.rng.choice(NAMES)} {self.rng.choice(NAMES)}"

    def slug(self) -> str:
        return "-".join(self.rng.choice(CONTENT_WORDS) for _ in range(self.rng.randint(3, 6)))

    def date(self) -> str:
        return f"March {self.rng.randint(1, 28)}, 2024"

    # --- the article ------------------------------------------------------------------------

    def blocks(self) -> list[_Block]:
        found: list[_Block] = []
        for _ in range(self.rng.randint(6, 24)):
            kind = self.rng.choices(("p", "h2", "ul", "quote", "table"), (74, 9, 8, 6, 3))[0]
            if kind == "p":
                found.append(_Block("p", (self.paragraph(),)))
            elif kind == "h2":
                found.append(_Block("h2", (self.title(3, 7),)))
            elif kind == "ul":
                items = tuple(self.sentence(4, 14) for _ in range(self.rng.randint(3, 6)))
                found.append(_Block("ul", items))
            elif kind == "quote":
                found.append(_Block("quote", (self.sentence(12, 30),)))
            else:
                rows = tuple(
                    f"{self.rng.choice(CONTENT_WORDS)} {self.rng.randint(1, 9999)}"
                    for _ in range(self.rng.randint(3, 7))
                )
                found.append(_Block("table", rows))
        return found

    def page(self, index: int) -> Page:
        layout = self.rng.choices(LAYOUTS, _LAYOUT_WEIGHTS)[0]
        kind = self.rng.choice(("Times", "Post", "Journal", "Notes", "Review", "Daily"))
        site = f"{self.rng.choice(CONTENT_WORDS).capitalize()} {kind}"
        host = f"www.{site.lower().replace(' ', '')}{index % 41}.example"
        url = f"https://{host}/{index}-{self.slug()}"
        headline = self.title()
        blocks = self.blocks()
        render = {
            "wordpress": self.wordpress,
            "news": self.news,
            "app": self.app,
            "ghost": self.ghost,
            "bare": self.bare,
        }[layout]
        html = render(site, url, headline, blocks)
        truth = "\n".join(text for block in blocks for text in block.texts)
        return Page(html=html.encode("utf-8"), url=url, main_text=truth, layout=layout)

    def linked(self, text: str) -> str:
        """`text` as HTML, with a link on a few of its words now and then."""
        words = text.split(" ")
        if len(words) < 8 or self.rng.random() < 0.6:
            return escape(text)
        start = self.rng.randint(0, len(words) - 4)
        end = start + self.rng.randint(1, 4)
        inside = escape(" ".join(words[start:end]))
        return (
            escape(" ".join(words[:start]) + " ")
            + f'<a href="/{self.slug()}/">{inside}</a>'
            + escape(" " + " ".join(words[end:]))
        )

    def block_html(self, block: _Block, *, wp: bool = False, css: str = "") -> str:
        texts = [escape(text) for text in block.texts]
        if block.kind == "p":
            attrs = f' class="{css}"' if css else ""
            return f"<p{attrs}>{self.linked(block.texts[0])}</p>"
        if block.kind == "h2":
            css = ' class="wp-block-heading"' if wp else ""
            return f"<h2{css}>{texts[0]}</h2>"
        if block.kind == "ul":
            css = ' class="wp-block-list"' if wp else ""
            return f"<ul{css}>" + "".join(f"<li>{t}</li>" for t in texts) + "</ul>"
        if block.kind == "quote":
            css = ' class="wp-block-quote"' if wp else ""
            return f"<blockquote{css}><p>{texts[0]}</p></blockquote>"
        cells = "".join(
            f"<tr><td>{name}</td><td>{value}</td></tr>"
            for name, _, value in (t.partition(" ") for t in texts)
        )
        table = f"<table><tbody>{cells}</tbody></table>"
        return f'<figure class="wp-block-table">{table}</figure>' if wp else table

    # --- pieces every CMS has -----------------------------------------------------------------

    def head(self, title: str, url: str, extra: str = "") -> str:
        rng = self.rng
        config = ",".join(
            f'"k{i}":{{"id":{rng.randint(1, 10**6)},"v":"{self.slug()}","w":{rng.random():.5f}}}'
            for i in range(rng.randint(60, 400))
        )
        style = "".join(
            f".c{i}{{margin:{i % 7}px;padding:{i % 5}px;color:#{i * 2654435761 % 0xFFFFFF:06x}}}"
            for i in range(rng.randint(100, 700))
        )
        ld = (
            '{"@context":"https://schema.org","@type":"NewsArticle","headline":"'
            f'{escape(title)}","author":{{"@type":"Person","name":"{self.name()}"}},'
            f'"datePublished":"2024-03-{rng.randint(10, 28)}T08:00:00Z"}}'
        )
        return (
            '<head><meta charset="utf-8"><meta name="viewport" content="width=device-width, '
            f'initial-scale=1"><title>{escape(title)}</title>'
            f'<meta name="description" content="{escape(self.sentence(10, 20))}">'
            f'<meta property="og:title" content="{escape(title)}"><link rel="canonical" '
            f'href="{url}"><style>{style}</style>'
            f"<script>window.__CONFIG__={{{config}}};</script>"
            f'<script type="application/ld+json">{ld}</script>{extra}</head>'
        )

    def menu(self, css: str, low: int = 6, high: int = 14) -> str:
        items = []
        for section in self.rng.sample(SECTIONS, self.rng.randint(low, high)):
            subs = "".join(
                f'<li class="menu-item"><a href="/{section.lower()}/{w}/">{w.capitalize()}</a></li>'
                for w in self.rng.sample(CONTENT_WORDS, self.rng.randint(0, 7))
            )
            sub = f'<ul class="sub-menu">{subs}</ul>' if subs else ""
            items.append(
                f'<li class="menu-item"><a href="/{section.lower()}/">{section}</a>{sub}</li>'
            )
        return f'<ul class="{css}">{"".join(items)}</ul>'

    def link_list(self, count: int, css: str = "") -> str:
        items = "".join(
            f'<li><a href="/{self.slug()}/">{escape(self.title(4, 9))}</a></li>'
            for _ in range(count)
        )
        return f'<ul class="{css}">{items}</ul>' if css else f"<ul>{items}</ul>"

    def teaser_cards(self, count: int, css: str) -> str:
        return "".join(
            f'<article class="{css}"><a href="/{self.slug()}/"><h3>{escape(self.title())}</h3>'
            f'</a><p class="{css}-excerpt">{escape(self.sentence(12, 24))}</p>'
            f"<time>{self.date()}</time></article>"
            for _ in range(count)
        )

    # --- the four kinds of site -----------------------------------------------------------------

    def wordpress(self, site: str, url: str, headline: str, blocks: list[_Block]) -> str:
        rng = self.rng
        post_id = rng.randint(100, 99999)
        body = []
        for i, block in enumerate(blocks):
            body.append(self.block_html(block, wp=True))
            if i == 1 and rng.random() < 0.5:
                body.append(
                    f'<figure class="wp-block-image size-large"><img src="/wp-content/uploads/'
                    f'{self.slug()}.jpg" alt=""><figcaption class="wp-element-caption">'
                    f"{escape(self.sentence(6, 14))}</figcaption></figure>"
                )
        nets = ("twitter", "facebook", "linkedin", "email", "print")
        share = "".join(
            f'<li class="share-{n}"><a class="share-{n} sd-button" href="{url}?share={n}">'
            f"<span>{n.capitalize()}</span></a></li>"
            for n in nets
        )
        related = "".join(
            f'<div class="jp-relatedposts-post"><h4 class="jp-relatedposts-post-title">'
            f'<a href="/{self.slug()}/">{escape(self.title())}</a></h4>'
            f'<time class="jp-relatedposts-post-date">{self.date()}</time>'
            f'<p class="jp-relatedposts-post-context">In "{rng.choice(SECTIONS)}"</p></div>'
            for _ in range(3)
        )
        jetpack = (
            '<div class="sharedaddy sd-sharing-enabled"><div class="robots-nocontent sd-block '
            'sd-social sd-social-icon-text sd-sharing"><h3 class="sd-title">Share this:</h3>'
            f'<div class="sd-content"><ul>{share}</ul></div></div></div>'
            '<div class="sharedaddy sd-block sd-like jetpack-likes-widget-wrapper">'
            '<h3 class="sd-title">Like this:</h3><div class="likes-widget-placeholder">'
            '<span class="loading">Loading...</span></div></div>'
            '<div id="jp-relatedposts" class="jp-relatedposts"><h3 class="jp-relatedposts-'
            f'headline"><em>Related</em></h3><div class="jp-relatedposts-items">{related}</div>'
            "</div>"
            if rng.random() < 0.6
            else ""
        )
        author = self.name()
        tags = ", ".join(
            f'<a href="/tag/{w}/" rel="tag">{w}</a>'
            for w in rng.sample(CONTENT_WORDS, rng.randint(2, 6))
        )
        widgets = (
            '<section class="widget widget_search"><form role="search" class="search-form">'
            '<label>Search for:</label><input type="search" name="s"><input type="submit" '
            'value="Search"></form></section>'
            f'<section class="widget widget_recent_entries"><h2 class="widget-title">Recent '
            f"Posts</h2>{self.link_list(rng.randint(5, 8))}</section>"
            '<section class="widget widget_recent_comments"><h2 class="widget-title">Recent '
            'Comments</h2><ul id="recentcomments">'
            + "".join(
                f'<li class="recentcomments"><span class="comment-author-link">{self.name()}'
                f'</span> on <a href="/{self.slug()}/#comment-{rng.randint(1, 9999)}">'
                f"{escape(self.title(4, 8))}</a></li>"
                for _ in range(5)
            )
            + "</ul></section>"
            '<section class="widget widget_archive"><h2 class="widget-title">Archives</h2><ul>'
            + "".join(
                f'<li><a href="/20{y}/{m:02d}/">{month} 20{y}</a></li>'
                for y, m, month in ((24, 3, "March"), (24, 2, "February"), (24, 1, "January"))
            )
            + "</ul></section>"
            '<section class="widget widget_categories"><h2 class="widget-title">Categories</h2>'
            + self.link_list(rng.randint(4, 9))
            + "</section>"
        )
        emoji = (
            "window._wpemojiSettings={"
            + ",".join(f'"s{i}":"{self.slug()}"' for i in range(rng.randint(20, 80)))
            + "};!function(e,a,t){var n,r,o,i=a.createElement('canvas');}(window,document);"
        )
        return (
            f'<!DOCTYPE html><html lang="en-US">{self.head(f"{headline} – {site}", url)}'
            f'<body class="post-template-default single single-post postid-{post_id} '
            'single-format-standard wp-embed-responsive">'
            f"<script>{emoji}</script>"
            '<div id="page" class="site"><a class="skip-link screen-reader-text" '
            'href="#content">Skip to content</a><header id="masthead" class="site-header" '
            'role="banner"><div class="site-branding"><p class="site-title"><a href="/">'
            f'{site}</a></p><p class="site-description">{escape(self.title(3, 6))}</p></div>'
            '<nav id="site-navigation" class="primary-navigation" aria-label="Primary menu">'
            '<button id="primary-mobile-menu" class="button">Menu</button>'
            f"{self.menu('menu-wrapper')}</nav></header>"
            '<div id="content" class="site-content"><div id="primary" class="content-area">'
            f'<main id="main" class="site-main"><article id="post-{post_id}" class="post-'
            f"{post_id} post type-post status-publish format-standard hentry category-"
            f'{rng.choice(SECTIONS).lower()} entry"><header class="entry-header">'
            f'<h1 class="entry-title">{escape(headline)}</h1></header>'
            f'<div class="entry-content">{"".join(body)}{jetpack}</div>'
            '<footer class="entry-footer"><div class="posted-by"><span class="posted-on">'
            f'Published <time class="entry-date published">{self.date()}</time></span>'
            f'<span class="byline">By <a href="/author/{author.split()[0].lower()}/" '
            f'rel="author">{author}</a></span></div><div class="post-taxonomies"><span '
            f'class="cat-links">Categorized as <a href="/category/x/" rel="category tag">'
            f'{rng.choice(SECTIONS)}</a></span><span class="tags-links">Tagged {tags}</span>'
            "</div></footer>"
            '<div class="author-bio show-avatars"><div class="author-bio-content">'
            f'<h2 class="author-title">By {author}</h2><p class="author-description">'
            f'{escape(self.sentence(12, 24))}</p><a class="author-link" href="/author/" '
            f'rel="author">View all of {author}’s posts.</a></div></div></article>'
            f"{self.wordpress_comments(headline)}"
            '<nav class="navigation post-navigation" aria-label="Posts"><h2 class="screen-'
            'reader-text">Post navigation</h2><div class="nav-links"><div class="nav-previous">'
            f'<a href="/{self.slug()}/" rel="prev"><p class="meta-nav">Previous post</p><p '
            f'class="post-title">{escape(self.title())}</p></a></div><div class="nav-next">'
            f'<a href="/{self.slug()}/" rel="next"><p class="meta-nav">Next post</p><p '
            f'class="post-title">{escape(self.title())}</p></a></div></div></nav>'
            "</main></div></div>"
            f'<aside class="widget-area" role="complementary">{widgets}</aside>'
            '<footer id="colophon" class="site-footer" role="contentinfo"><div class="site-info">'
            f'<div class="site-name"><a href="/">{site}</a></div><div class="powered-by">'
            'Proudly powered by <a href="https://wordpress.org/">WordPress</a>.</div></div>'
            "</footer></div>"
            '<div id="cookie-notice" role="dialog" class="cookie-notice-hidden cn-position-'
            'bottom" aria-label="Cookie Notice"><div class="cookie-notice-container"><span '
            'id="cn-notice-text" class="cn-text-container">We use cookies to ensure that we '
            "give you the best experience on our website. If you continue to use this site we "
            'will assume that you are happy with it.</span><span id="cn-notice-buttons" '
            'class="cn-buttons-container"><a href="#" id="cn-accept-cookie" class="cn-set-'
            'cookie cn-button">Ok</a><a href="/privacy-policy/" class="cn-privacy-policy-link '
            'cn-link">Privacy policy</a></span></div></div>'
            "<script>/*! This file is auto-generated */!function(c,d){var e=!1;"
            "c.wp=c.wp||{};}(window,document);</script></body></html>"
        )

    def wordpress_comments(self, headline: str) -> str:
        count = self.rng.choice((0, 0, 0, 1, 2, 4, 7, 12, 25))
        if not count:
            return ""
        items = "".join(
            f'<li id="comment-{i}" class="comment depth-1"><article id="div-comment-{i}" '
            'class="comment-body"><footer class="comment-meta"><div class="comment-author '
            f'vcard"><b class="fn">{self.name()}</b> <span class="says">says:</span></div>'
            f'<div class="comment-metadata"><a href="#comment-{i}"><time>{self.date()} at '
            f"{self.rng.randint(1, 12)}:{self.rng.randint(10, 59)} pm</time></a></div></footer>"
            f'<div class="comment-content"><p>{escape(self.paragraph(1, 3))}</p></div>'
            '<div class="reply"><a rel="nofollow" class="comment-reply-link" href="#respond">'
            "Reply</a></div></article></li>"
            for i in range(count)
        )
        plural = "thought" if count == 1 else "thoughts"
        return (
            '<div id="comments" class="comments-area default-max-width show-avatars">'
            f'<h2 class="comments-title">{count} {plural} on “{escape(headline)}”</h2>'
            f'<ol class="comment-list">{items}</ol><div id="respond" class="comment-respond">'
            '<h3 id="reply-title" class="comment-reply-title">Leave a comment</h3>'
            '<form action="/wp-comments-post.php" method="post" id="commentform" '
            'class="comment-form"><p class="comment-notes">Your email address will not be '
            'published. Required fields are marked *</p><p class="comment-form-comment">'
            '<label for="comment">Comment *</label><textarea id="comment"></textarea></p>'
            '<p class="form-submit"><input name="submit" type="submit" class="submit" '
            'value="Post Comment"></p></form></div></div>'
        )

    def news(self, site: str, url: str, headline: str, blocks: list[_Block]) -> str:
        rng = self.rng
        body = []
        for i, block in enumerate(blocks):
            body.append(f'<div data-component="text-block">{self.block_html(block)}</div>')
            if i in (2, 7, 13) and rng.random() < 0.7:
                body.append(
                    '<div class="ad-slot ad-slot--inline" data-ad-unit="mpu"><div class='
                    '"ad-slot__label">Advertisement</div><iframe title="ad" src="about:blank">'
                    "</iframe></div>"
                )
            if i in (4, 10) and rng.random() < 0.5:
                body.append(
                    f'<p class="related-inline"><strong>Read more:</strong> <a href="/'
                    f'{self.slug()}">{escape(self.title())}</a></p>'
                )
            if i == 5 and rng.random() < 0.25:
                body.append(
                    '<blockquote class="twitter-tweet"><p lang="en" dir="ltr">'
                    f"{escape(self.sentence(8, 20))}</p>&mdash; {self.name()} (@"
                    f'{rng.choice(CONTENT_WORDS)}) <a href="https://twitter.com/x/status/'
                    f'{rng.randint(10**15, 10**16)}">{self.date()}</a></blockquote>'
                )
            if i == 8 and rng.random() < 0.4:
                body.append(
                    '<aside class="newsletter-inline"><h3>Sign up for the morning briefing</h3>'
                    "<p>The day's top stories, straight to your inbox every weekday.</p>"
                    '<form><input type="email" placeholder="Your email address"><button>'
                    "Sign up</button></form></aside>"
                )
        topics = "".join(
            f'<li><a href="/topics/{w}">{w.capitalize()}</a></li>'
            for w in rng.sample(CONTENT_WORDS, rng.randint(3, 6))
        )
        most_read = "".join(
            f'<li><span class="rank">{k}</span><a href="/{self.slug()}">'
            f"{escape(self.title())}</a></li>"
            for k in range(1, 11)
        )
        columns = "".join(
            f'<div class="footer-col"><h4>{section}</h4>{self.link_list(rng.randint(4, 8))}</div>'
            for section in rng.sample(SECTIONS, 4)
        )
        ticker = "".join(
            f'<li><a href="/{self.slug()}">{escape(self.title(5, 9))}</a></li>' for _ in range(5)
        )
        return (
            f'<!DOCTYPE html><html lang="en-GB">{self.head(f"{headline} | {site}", url)}<body>'
            '<div id="onetrust-consent-sdk"><div id="onetrust-banner-sdk" role="region" '
            'aria-label="Cookie banner"><div id="onetrust-policy"><h2 id="onetrust-policy-'
            f'title">We value your privacy</h2><p id="onetrust-policy-text">{COOKIE_TEXT}</p>'
            '</div><button id="onetrust-accept-btn-handler">I Accept</button><button id='
            '"onetrust-pc-btn-handler">Show Purposes</button></div></div>'
            '<a class="skip-link" href="#main-content">Skip to main content</a>'
            f'<header class="masthead"><a class="logo" href="/">{site}</a>'
            '<div class="masthead__actions"><a href="/subscribe">Subscribe</a><a href="/login">'
            f'Sign in</a></div><nav class="nav-primary" aria-label="Sections">'
            f"{self.menu('nav-primary__list', 10, 20)}</nav></header>"
            f'<div class="ticker" aria-label="Breaking news"><span class="ticker__label">Live'
            f"</span><ul>{ticker}</ul></div>"
            '<main id="main-content"><article class="article" itemscope itemtype="https://'
            'schema.org/NewsArticle"><header class="article-header"><nav class="breadcrumb">'
            f'<a href="/">{rng.choice(SECTIONS)}</a> › <a href="/">{rng.choice(SECTIONS)}</a>'
            f'</nav><h1 class="article-headline" itemprop="headline">{escape(headline)}</h1>'
            f'<p class="article-standfirst">{escape(self.sentence(12, 24))}</p>'
            f'<div class="byline"><span class="byline__author" itemprop="author">By <a href='
            f'"/profile/x">{self.name()}</a>, {rng.choice(SECTIONS)} correspondent</span>'
            f'<time datetime="2024-03-10T08:00:00Z">{self.date()}</time></div>'
            '<div class="share-tools"><button>Share</button><a href="#">Facebook</a><a href="#">'
            'X</a><a href="#">Email</a><button>Save</button></div></header>'
            '<figure class="lead-image"><img src="/images/lead.jpg" alt=""><figcaption><span '
            f'class="caption">{escape(self.sentence(6, 14))}</span><span class="credit">Photo: '
            f"{self.name()}/Agency</span></figcaption></figure>"
            f'<div class="article-body" itemprop="articleBody">{"".join(body)}</div>'
            '<footer class="article-footer"><div class="topics"><h3>Related topics</h3><ul>'
            f'{topics}</ul></div><div id="comments" class="comments-widget"><button class='
            '"comments-toggle">View comments</button><div id="coral_thread"></div><script>'
            "window.Coral&&Coral.createStreamEmbed({id:'coral_thread',autoRender:false});"
            "</script></div></footer></article>"
            '<section class="more-on-this-story"><h2>More on this story</h2>'
            f"{self.teaser_cards(rng.randint(3, 8), 'story-card')}</section>"
            '<aside class="sidebar"><section class="most-read"><h2>Most read</h2><ol>'
            f'{most_read}</ol></section><div class="ad-slot ad-slot--sidebar"><div class='
            '"ad-slot__label">Advertisement</div></div></aside></main>'
            f'<footer class="site-footer"><div class="footer-cols">{columns}</div>'
            f'<p class="copyright">© 2024 {site}. All rights reserved.</p><ul class="legal">'
            '<li><a href="/terms">Terms of use</a></li><li><a href="/privacy">Privacy policy'
            '</a></li><li><a href="#">Cookie settings</a></li></ul></footer>'
            "<script>(function(w,d){w.dataLayer=w.dataLayer||[];"
            "w.dataLayer.push({event:'pageview'});})(window,document);</script></body></html>"
        )

    def css(self) -> str:
        """A class name as CSS-in-JS generates it: a hash, nothing a heuristic can read."""
        letters = "abcdefghijklmnopqrstuvwxyz0123456789"
        return "css-" + "".join(self.rng.choice(letters) for _ in range(self.rng.randint(5, 7)))

    def app(self, site: str, url: str, headline: str, blocks: list[_Block]) -> str:
        rng = self.rng
        p_css = f"{self.css()} evys1bk0"
        body = []
        for i, block in enumerate(blocks):
            if i % rng.randint(3, 5) == 0:
                body.append(
                    f'</div></div><div class="{self.css()} StoryBodyCompanionColumn">'
                    f'<div class="{self.css()}">'
                )
            body.append(self.block_html(block, css=p_css))
            if i in (3, 9, 15) and rng.random() < 0.8:
                body.append(
                    f'</div></div><div id="mid{i}-wrapper" class="{self.css()}"><div class='
                    f'"{self.css()}"><p class="{self.css()}">Advertisement</p><a href="#after-'
                    f'mid{i}" class="{self.css()}">Skip Advertisement</a></div></div>'
                    f'<div class="{self.css()}"><div class="{self.css()}">'
                )
        more = "".join(
            f'<li class="{self.css()}"><a class="{self.css()}" href="/{self.slug()}"><h3 class='
            f'"{self.css()}">{escape(self.title())}</h3><p class="{self.css()}">'
            f"{escape(self.sentence(10, 22))}</p></a></li>"
            for _ in range(rng.randint(4, 8))
        )
        trending = "".join(
            f'<li class="{self.css()}"><a href="/{self.slug()}">{escape(self.title())}</a></li>'
            for _ in range(rng.randint(5, 10))
        )
        data = ",".join(
            f'"{self.slug()}":{{"id":"{rng.randint(1, 10**9)}","t":"{self.slug()}"}}'
            for _ in range(rng.randint(80, 400))
        )
        nav = "".join(
            f'<li class="{self.css()}"><a class="{self.css()}" href="/section/{w.lower()}">{w}'
            "</a></li>"
            for w in rng.sample(SECTIONS, rng.randint(8, 16))
        )
        return (
            f'<!DOCTYPE html><html lang="en">{self.head(f"{headline} - {site}", url)}<body>'
            f'<div id="__next"><div class="{self.css()}"><a class="{self.css()}" href="#site-'
            f'content">Skip to content</a><header class="{self.css()}"><div class="'
            f'{self.css()}"><a href="/" class="{self.css()}">{site}</a><button class="'
            f'{self.css()}">Subscribe for $1/week</button><a href="/login" class="{self.css()}">'
            f'Log in</a></div><nav aria-label="Main" class="{self.css()}"><ul class="'
            f'{self.css()}">{nav}</ul></nav></header>'
            f'<main id="site-content"><div class="{self.css()}"><article id="story" class="'
            f'{self.css()}"><header class="{self.css()}"><p class="{self.css()}"><a href="/">'
            f'{rng.choice(SECTIONS)}</a></p><h1 data-testid="headline" class="{self.css()}">'
            f'{escape(headline)}</h1><p id="article-summary" class="{self.css()}">'
            f'{escape(self.sentence(12, 24))}</p><div class="{self.css()}"><p class="'
            f'{self.css()}">By <a href="/by/x" class="{self.css()}">{self.name()}</a></p>'
            f'<time class="{self.css()}">{self.date()}</time></div><div class="{self.css()}">'
            f'<button class="{self.css()}">Share full article</button><span class="'
            f'{self.css()}">{rng.randint(2, 900)}</span></div></header>'
            f'<section name="articleBody" itemprop="articleBody" class="meteredContent '
            f'{self.css()}"><div class="{self.css()} StoryBodyCompanionColumn"><div class="'
            f'{self.css()}">{"".join(body)}</div></div></section>'
            f'<div class="{self.css()}"><p class="{self.css()}">A version of this article '
            f"appears in print on {self.date()}, Section A, Page {rng.randint(1, 30)} of the "
            f"edition with the headline: {escape(self.title())}.</p></div></article>"
            f'<div class="{self.css()}"><h2 class="{self.css()}">More in {rng.choice(SECTIONS)}'
            f'</h2><ol class="{self.css()}">{more}</ol></div><div class="{self.css()}"><h2 '
            f'class="{self.css()}">Trending</h2><ol class="{self.css()}">{trending}</ol></div>'
            f'</div></main><footer class="{self.css()}"><nav aria-label="More sections" class="'
            f'{self.css()}">{self.link_list(rng.randint(12, 24), self.css())}</nav><p class="'
            f'{self.css()}">© 2024 {site}</p></footer></div></div>'
            f'<script id="__NEXT_DATA__" type="application/json">{{"props":{{{data}}}}}'
            "</script></body></html>"
        )

    def ghost(self, site: str, url: str, headline: str, blocks: list[_Block]) -> str:
        rng = self.rng
        body = []
        for i, block in enumerate(blocks):
            body.append(self.block_html(block))
            if i == 2 and rng.random() < 0.5:
                body.append(
                    '<figure class="kg-card kg-image-card kg-card-hascaption"><img src="/content/'
                    f'images/{self.slug()}.jpg" class="kg-image" alt=""><figcaption>'
                    f"{escape(self.sentence(5, 12))}</figcaption></figure>"
                )
            if i == 6 and rng.random() < 0.5:
                body.append(
                    '<figure class="kg-card kg-bookmark-card"><a class="kg-bookmark-container" '
                    f'href="https://elsewhere.example/{self.slug()}"><div class="kg-bookmark-'
                    f'content"><div class="kg-bookmark-title">{escape(self.title())}</div><div '
                    f'class="kg-bookmark-description">{escape(self.sentence(12, 24))}</div>'
                    '<div class="kg-bookmark-metadata"><span class="kg-bookmark-publisher">'
                    f"{self.name()}</span></div></div></a></figure>"
                )
        tag = rng.choice(SECTIONS)
        return (
            f'<!DOCTYPE html><html lang="en">{self.head(headline, url)}'
            f'<body class="post-template tag-{tag.lower()}"><div class="viewport">'
            '<header id="gh-head" class="gh-head outer"><div class="gh-head-inner inner">'
            f'<div class="gh-head-brand"><a class="gh-head-logo" href="/">{site}</a></div>'
            f'<nav class="gh-head-menu">{self.menu("nav", 3, 6)}</nav><div class="gh-head-'
            'actions"><a class="gh-head-link" href="#/portal/signin">Sign in</a><a class="'
            'gh-head-button" href="#/portal/signup">Subscribe</a></div></div></header>'
            '<div class="site-content"><main id="site-main" class="site-main">'
            f'<article class="article post tag-{tag.lower()}"><header class="article-header '
            f'gh-canvas"><div class="article-tag post-card-tags"><a href="/tag/x/">{tag}</a>'
            f'</div><h1 class="article-title">{escape(headline)}</h1><p class="article-'
            f'excerpt">{escape(self.sentence(10, 20))}</p><div class="article-byline">'
            f'<a href="/author/x/">{self.name()}</a><time>{self.date()}</time><span>'
            f"{rng.randint(2, 14)} min read</span></div></header>"
            f'<section class="gh-content gh-canvas">{"".join(body)}</section>'
            '<section class="article-comments gh-canvas"><script defer src="/comments-ui.js" '
            'data-ghost-comments="/" data-count="true"></script></section></article></main>'
            '<aside class="read-more-wrap outer"><div class="read-more inner">'
            f"{self.teaser_cards(3, 'post-card')}</div></aside></div>"
            '<footer class="site-footer outer"><div class="inner"><section class="copyright">'
            f'<a href="/">{site}</a> © 2024</section><nav class="site-footer-nav"><ul><li>'
            '<a href="#/portal/">Sign up</a></li><li><a href="/about/">About</a></li></ul></nav>'
            '<div class="gh-powered-by"><a href="https://ghost.org/">Powered by Ghost</a></div>'
            '</div></footer><div class="footer-cta outer"><div class="inner"><h2 class='
            '"footer-cta-title">Sign up for more like this.</h2><a class="footer-cta-button" '
            'href="#/portal">Enter your email<span>Subscribe</span></a></div></div></div>'
            "</body></html>"
        )

    def bare(self, site: str, url: str, headline: str, blocks: list[_Block]) -> str:
        body = "".join(self.block_html(block) for block in blocks)
        return (
            f"<html><head><title>{escape(headline)}</title></head><body>"
            f'<p><a href="/">Home</a> | <a href="/archive/">Archive</a> | <a href="/about/">'
            f"About</a></p><hr><h1>{escape(headline)}</h1>{body}<hr>"
            f"<p><small>{site}, {self.date()}</small></p></body></html>"
        )
