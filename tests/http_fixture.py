"""A small HTTP file server on 127.0.0.1 for the download tests, with the faults real servers have.

Per file it can: honour or ignore Range requests, drop the connection once after N bytes, send fewer
bytes than its Content-Length, answer slowly, or answer with an error status. It records every
request's path and Range header, so a test can see that a download resumed where it should.
"""
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CHUNK = 64 * 1024


class Behaviour:
    """How the server treats one file; tests may change it while a download runs."""

    def __init__(self, data, ignore_range=False, drop_after=None, short_by=0, delay=0.0,
                 status=None, first_byte_delay=0.0):
        self.data = data
        self.ignore_range = ignore_range
        self.drop_after = drop_after      # close the connection once, after this many file bytes
        self.short_by = short_by          # every response sends this many bytes fewer than declared
        self.delay = delay                # seconds of sleep after each 64 KiB chunk
        self.status = status              # answer with this status instead of the file
        self.first_byte_delay = first_byte_delay


class FileServer:
    def __init__(self):
        self.files = {}
        self.requests = []  # (path, Range header or None)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep the test output clean
                pass

            def do_GET(self):
                server.requests.append((self.path, self.headers.get('Range')))
                try:
                    server.answer(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client went away (Ctrl-C, timeout): nothing to do

        self.httpd = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def add(self, path, data, **behaviour):
        self.files[path] = Behaviour(data, **behaviour)
        return self.url(path)

    def url(self, path):
        return f'http://127.0.0.1:{self.httpd.server_address[1]}{path}'

    def ranges(self, path):
        return [value for requested, value in self.requests if requested == path]

    def answer(self, handler):
        behaviour = self.files.get(handler.path)
        if behaviour is None:
            handler.send_error(404, 'Not Found')
            return
        if behaviour.status:
            handler.send_error(behaviour.status)
            return
        data = behaviour.data
        start = 0
        requested = handler.headers.get('Range')
        match = re.fullmatch(r'bytes=(\d+)-', requested or '')
        if match and not behaviour.ignore_range:
            start = int(match.group(1))
            if start >= len(data):
                handler.send_response(416)
                handler.send_header('Content-Range', f'bytes */{len(data)}')
                handler.send_header('Content-Length', '0')
                handler.end_headers()
                return
            handler.send_response(206)
            handler.send_header('Content-Range', f'bytes {start}-{len(data) - 1}/{len(data)}')
        else:
            handler.send_response(200)
        handler.send_header('Content-Length', str(len(data) - start))
        handler.send_header('Content-Type', 'application/octet-stream')
        handler.end_headers()
        time.sleep(behaviour.first_byte_delay)

        end = len(data) - behaviour.short_by
        drop = behaviour.drop_after
        if drop is not None and start < drop < end:
            end = drop
            behaviour.drop_after = None  # once
        position = start
        while position < end:
            piece = data[position:min(position + CHUNK, end)]
            handler.wfile.write(piece)
            position += len(piece)
            if behaviour.delay:
                handler.wfile.flush()
                time.sleep(behaviour.delay)
        handler.wfile.flush()
        if end < len(data):
            # End the connection here, as a network failure would: the client sees the body stop.
            handler.close_connection = True
            try:
                handler.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def closed_port_url(path='/file'):
    """A URL on 127.0.0.1 where nothing listens: what a machine without network sees."""
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        port = probe.getsockname()[1]
    return f'http://127.0.0.1:{port}{path}'


def serve():
    """A FileServer for one test, closed afterwards: `yield from serve()` in a fixture."""
    server = FileServer()
    yield server
    server.close()
