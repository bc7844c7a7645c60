"""Secrets out of everything shown or stored: URLs lose their passwords and secret-looking
query values before they are printed, logged or written to a database row."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

#: What replaces a secret.
MASK = "***"

#: Query keys whose values are secrets (matched case-insensitively, as substrings).
SECRET_KEYS = ("password", "passwd", "secret", "token", "key", "credential", "signature", "auth")

# scheme://userinfo@host... ; stops at whitespace and at quotes/brackets around a URL in text.
_URL_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>()\[\]{}]+")


def redact_url(url: str) -> str:
    """``url`` with the password of its userinfo and every secret-looking query value masked.

    ``postgresql://app:hunter2@db/foundry`` -> ``postgresql://app:***@db/foundry``;
    ``s3://b/p?endpoint_url=http://u:pw@h:8333&aws_secret_access_key=x`` masks both the nested
    password and the key. Text that is not a URL comes back unchanged.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return _URL_RE.sub(MASK, url) if "://" in url else url
    if not parts.scheme or not parts.netloc:
        return url
    netloc = _redact_userinfo(parts.netloc)
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode(
            [(k, MASK if _is_secret_key(k) else redact_text(v)) for k, v in pairs], safe="*:/@"
        )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str) -> str:
    """``text`` (an error message, a log line) with every URL in it passed through
    :func:`redact_url`."""
    if "://" not in text:
        return text
    return _URL_RE.sub(lambda m: redact_url(m.group(0)), text)


def _redact_userinfo(netloc: str) -> str:
    if "@" not in netloc:
        return netloc
    userinfo, _, host = netloc.rpartition("@")
    user, has_password, _ = userinfo.partition(":")
    if has_password:
        return f"{user}:{MASK}@{host}"
    # A lone userinfo part that is long and opaque is a token (https://TOKEN@host).
    return f"{MASK}@{host}" if len(user) >= 20 else netloc


def _is_secret_key(key: str) -> bool:
    lowered = key.lower()
    return any(word in lowered for word in SECRET_KEYS) and lowered != "endpoint_url"
