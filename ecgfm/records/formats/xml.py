"""Safe XML for ECG files: no DTD loading, no external entities, no entity expansion (defusedxml).

A DOCTYPE is allowed (GE MUSE files name a ``restecg.dtd`` that is never loaded), entity declarations are not:
an entity bomb or an external entity is refused before anything is expanded or fetched.
"""

from __future__ import annotations

from collections.abc import Iterator
from xml.etree.ElementTree import Element, ParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from ecgfm.records.formats.errors import FormatError


def parse_xml(data: bytes, kind: str) -> Element:
    """The root element of ``data``; :class:`FormatError` for XML that is malformed or declares entities."""
    try:
        return fromstring(data, forbid_dtd=False, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        raise FormatError(
            f"{kind}: the XML declares entities or external references ({type(exc).__name__}), which are refused"
        ) from None
    except ParseError as exc:
        raise FormatError(f"{kind}: malformed XML (line {exc.position[0]}, column {exc.position[1]})") from None


def local(tag: str) -> str:
    """``{namespace}name`` -> ``name``."""
    return tag.rsplit("}", 1)[-1]


def children(element: Element, name: str) -> list[Element]:
    return [child for child in element if local(child.tag) == name]


def child(element: Element, name: str) -> Element | None:
    return next((c for c in element if local(c.tag) == name), None)


def path(element: Element | None, *names: str) -> Element | None:
    """The first element along ``names`` (one child name per level), or None."""
    for name in names:
        if element is None:
            return None
        element = child(element, name)
    return element


def text(element: Element | None, default: str | None = None) -> str | None:
    if element is None or element.text is None:
        return default
    return element.text.strip()


def descendants(element: Element, name: str) -> Iterator[Element]:
    return (e for e in element.iter() if local(e.tag) == name)
