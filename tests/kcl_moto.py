"""moto's server as a WSGI app, for hypercorn: the KCL's Kinesis client speaks only HTTP/2.

``hypercorn tests.kcl_moto:app --bind 127.0.0.1:PORT`` serves every AWS service moto has over
HTTP/1.1 and HTTP/2 (cleartext). The KCL engine's end-to-end test starts its own instance on a
port of its own; the shared moto server is left alone.
"""

from __future__ import annotations

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

app = DomainDispatcherApplication(create_backend_app)
