"""moto server answering one request at a time: python serial_moto.py PORT (0 picks a free port).

DynamoDB makes each request atomic; moto's threaded server does not. Its TransactWriteItems
deep-copies the table while other threads write to it, which fails ("dictionary changed size
during iteration") and, when a transaction is cancelled, puts the stale copy back over other
requests' writes. Tests of concurrent writers would be testing moto, so every request here holds
one lock, while connections stay open and concurrent as with moto_server.

Prints the port it listens on, on 127.0.0.1 only, then serves until killed.
"""

import sys
import threading

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import make_server

moto = DomainDispatcherApplication(create_backend_app)
one_at_a_time = threading.Lock()


def app(environ, start_response):
    with one_at_a_time:
        return list(moto(environ, start_response))


server = make_server("127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 0, app, threaded=True)
print(server.port, flush=True)
server.serve_forever()
