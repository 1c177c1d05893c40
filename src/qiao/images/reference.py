"""Image references as Docker reads them (distribution/reference).

A reference is ``[DOMAIN/]PATH[:TAG][@DIGEST]``.  Without a domain (a first
component with no ``.`` or ``:`` and other than ``localhost``) it is on
``docker.io``, and a one-component path there is under ``library/``; the
"familiar" form drops both again: ``docker.io/library/busybox:latest`` is
``busybox:latest``.  qiao keeps tags in the familiar form, as
``docker images`` shows them.  Without a tag or digest the tag is
``latest``.  A 64-hex string is an image ID, never a name.
"""

from __future__ import annotations

import re

from qiao.engine.errors import InvalidParameter

DEFAULT_DOMAIN = "docker.io"
OFFICIAL_PREFIX = "library/"
DEFAULT_TAG = "latest"
MAX_NAME = 255

# The image Docker's clients name to get qiao's image-less mode: the command
# runs from the host's filesystem, as ``qiao run`` without ``--image`` does.
HOST_IMAGE = "qiao/host"

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
_PATH = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*\Z")
_DOMAIN_RE = re.compile(rf"{_DOMAIN}\Z")
_TAG = re.compile(r"[\w][\w.-]{0,127}\Z")
_DIGEST = re.compile(r"sha256:[a-f0-9]{64}\Z")
_HEX64 = re.compile(r"[a-f0-9]{64}\Z")
_ID_PREFIX = re.compile(r"(?:sha256:)?[a-f0-9]{1,64}\Z")


class Reference:
    """A parsed reference: ``name`` is the full repository name
    (``docker.io/library/busybox``), ``tag`` and ``digest`` may be empty."""

    __slots__ = ("name", "tag", "digest")

    def __init__(self, name: str, tag: str = "", digest: str = ""):
        self.name, self.tag, self.digest = name, tag, digest

    @property
    def familiar_name(self) -> str:
        name = self.name.removeprefix(DEFAULT_DOMAIN + "/")
        if name != self.name and name.startswith(OFFICIAL_PREFIX) and name.count("/") == 1:
            name = name.removeprefix(OFFICIAL_PREFIX)
        return name

    def familiar(self) -> str:
        """``busybox:latest``, ``localhost/busybox:local``, ``busybox@sha256:...``."""
        return self.familiar_name + (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")

    def __repr__(self) -> str:
        return f"Reference({self.familiar()!r})"


def parse(text: str, default_tag: bool = True) -> Reference:
    """A reference, normalised; ``default_tag``: no tag nor digest means ``latest``.
    Raises InvalidParameter with Docker's wording for what does not parse."""
    if not text:
        raise InvalidParameter("invalid reference format: repository name must have at least one component")
    rest, _, digest = text.partition("@")
    if digest and not _DIGEST.match(digest):
        raise InvalidParameter(f"invalid reference format: {text!r} has an invalid digest")
    name, tag = rest, ""
    colon, slash = rest.rfind(":"), rest.rfind("/")
    if colon > slash:
        name, tag = rest[:colon], rest[colon + 1 :]
        if not _TAG.match(tag):
            raise InvalidParameter(f"invalid reference format: {text!r} has an invalid tag")
    domain, _, path = name.partition("/")
    if not path or not ("." in domain or ":" in domain or domain == "localhost" or domain != domain.lower()):
        domain, path = DEFAULT_DOMAIN, name
        if "/" not in path:
            path = OFFICIAL_PREFIX + path
    elif not _DOMAIN_RE.match(domain):
        raise InvalidParameter(f"invalid reference format: {text!r}")
    if not _PATH.match(path):
        if path != path.lower():
            raise InvalidParameter(f"invalid reference format: repository name ({name}) must be lowercase")
        raise InvalidParameter(f"invalid reference format: {text!r}")
    if _HEX64.match(name):
        raise InvalidParameter(f"invalid repository name ({name}), cannot specify 64-byte hexadecimal strings")
    full = f"{domain}/{path}"
    if len(full) > MAX_NAME:
        raise InvalidParameter(f"invalid reference format: repository name must not be more than {MAX_NAME} characters")
    if not tag and not digest and default_tag:
        tag = DEFAULT_TAG
    return Reference(full, tag, digest)


def familiar(text: str) -> str:
    """``text`` as qiao keeps a tag: ``busybox`` -> ``busybox:latest``."""
    return parse(text).familiar()


def is_host(image: str) -> bool:
    """Whether ``image`` names qiao's image-less mode (or nothing: qiao's own CLI without ``--image``)."""
    if not image:
        return True
    try:
        return parse(image).familiar() == HOST_IMAGE + ":" + DEFAULT_TAG
    except InvalidParameter:
        return False


def is_id_prefix(text: str) -> bool:
    """Whether ``text`` may name an image by (a prefix of) its ID (``sha256:`` optional)."""
    return bool(_ID_PREFIX.match(text))


def with_tag(repo: str, tag: str) -> Reference:
    """``repo`` (which may carry its own tag) with ``tag`` (if given) as Docker's
    import and tag do; a digest reference cannot be tagged."""
    ref = parse(repo, default_tag=not tag)
    if ref.digest:
        raise InvalidParameter("refusing to create a tag with a digest reference")
    if tag:
        if not _TAG.match(tag):
            raise InvalidParameter(f"invalid tag format: {tag!r}")
        ref.tag = tag
    return ref
