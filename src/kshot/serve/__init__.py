"""``kshot serve``: libraries behind an HTTP API (FastAPI on uvicorn) and a web page.

``app.py`` builds the application from :class:`settings.Settings`; each library is held by a
:class:`libraries.ServedLibrary` (one thread owns it) and queried through a
:class:`batcher.MicroBatcher`; ``auth.py``, ``limits.py``, ``errors.py``, ``metrics.py`` and
``access_log.py`` hold one concern each; ``client.py`` is a stdlib client for scripts.
"""
