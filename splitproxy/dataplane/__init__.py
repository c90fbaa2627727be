"""The data path: which version serves a request, and the HTTP/1.1 proxy that carries it.

`routing` (the pure routing decision) and `state` (the immutable snapshot every request reads)
are the core; the rest is asyncio protocols over the httptools parser.
"""
