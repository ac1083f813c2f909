"""``nmt-serve``: a LibreTranslate-compatible HTTP server with dynamic batching and a web UI.

- :mod:`nmt.serve.command` the command: settings, model, socket, uvicorn, clean stop.
- :mod:`nmt.serve.app` the FastAPI application (routes, errors as ``{"error": "..."}``).
- :mod:`nmt.serve.protocol` LibreTranslate's ``/translate`` fields, read and checked.
- :mod:`nmt.serve.batcher` concurrent requests decoded together by one worker thread.
- :mod:`nmt.serve.server` uvicorn's server with a clean stop on SIGINT/SIGTERM.
- ``static/index.html`` the one-page UI at ``/``.

Needs the ``serve`` extra (``pip install 'pipenmt[serve]'``: FastAPI, uvicorn,
python-multipart); :mod:`nmt.serve.batcher` and :mod:`nmt.serve.protocol` need nothing.
"""
