"""A loopback HTTP server for download tests: nothing reaches the internet."""

import contextlib
import functools
import http.server
import threading


@contextlib.contextmanager
def serve_folder(folder):
  """Serves ``folder`` on 127.0.0.1 at a free port; yields the base URL (``http://127.0.0.1:PORT/``)."""
  handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  try:
    yield f"http://127.0.0.1:{server.server_address[1]}/"
  finally:
    server.shutdown()
    thread.join()
