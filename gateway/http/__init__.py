"""The HTTP edge: the ASGI app and its one-write wire protocol."""
