"""The segmenter over HTTP: a FastAPI server (``app``) and the ``remote`` backend (``client``)."""
