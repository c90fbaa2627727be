"""The data path: which version serves a request, and the HTTP/1.1 proxy that carries it.

`routing` (the pure routing decision) and `state` (the immutable snapshot every request reads)
are the core, with the pure HTTP pieces beside them: `http11` (message helpers and framing
words), `heads` (the head edits a proxy makes), `retry` (when a failed attempt is replayed).
The rest is asyncio protocols over the httptools parser: `client` (a client connection, its
requests in order), `exchange` (one request and its response), `upstream` (a connection to an
upstream) and `pools` (keep-alive pools per address), with `flow` carrying back-pressure
between them and `context` holding what every connection shares.
"""
