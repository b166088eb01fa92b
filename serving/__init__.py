"""The HTTP layer around :mod:`ecgfm`, used by ``service.py`` (which keeps the BentoML services and their wiring):
the contract (``contract``: routes, media types, schemas, ERRORS), request decoding (``decoding``: bodies and
uploads → a prepared record), the ASGI middlewares (``middleware``), the OpenAPI document (``openapi``), the pages
and static files (``pages``, the files in ``web/``), logs and tracing (``logs``, ``tracing``), worker lifecycle
(``lifecycle``) and the operator's metrics (``metrics``).

May import: :mod:`ecgfm` and :mod:`interpreter`; nothing here imports ``service``.
"""
