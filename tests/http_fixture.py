"""A small HTTP file server on 127.0.0.1 for the download tests, with the faults real servers have.

Per file it can: honour or ignore Range requests, drop the connection once after N bytes, send fewer
bytes than its Content-Length, answer slowly, or answer with an error status; and what hostile or
broken servers do: announce a Content-Length other than the body's (or none), send an endless body,
trickle the body or the headers a byte at a time, stall, or encode the body without being asked.
It records every request's path and Range header, so a test can see that a download resumed where
it should.
"""
import contextlib
import re
import signal
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CHUNK = 64 * 1024
REAL = object()  # content_length: announce the body's real length


class Behaviour:
    """How the server treats one file; tests may change it while a download runs."""

    def __init__(self, data, ignore_range=False, drop_after=None, short_by=0, delay=0.0,
                 status=None, first_byte_delay=0.0, content_length=REAL, endless=False,
                 trickle=None, stall_after=None, stall_once=False, content_encoding=None,
                 header_trickle=None):
        self.data = data
        self.ignore_range = ignore_range
        self.drop_after = drop_after      # close the connection once, after this many file bytes
        self.short_by = short_by          # every response sends this many bytes fewer than declared
        self.delay = delay                # seconds of sleep after each 64 KiB chunk
        self.status = status              # answer with this status instead of the file
        self.first_byte_delay = first_byte_delay
        self.content_length = content_length  # REAL, None (no header: the body ends at the close), or a lie
        self.endless = endless            # after the data, zeros until the client goes away (delay applies)
        self.trickle = trickle            # seconds between the body's bytes, sent one at a time
        self.stall_after = stall_after    # after this many body bytes, send nothing more ...
        self.stall_once = stall_once      # ... in the first response only
        self.content_encoding = content_encoding  # a Content-Encoding header, asked for or not
        self.header_trickle = header_trickle  # seconds between the bytes of the status line and headers


class FileServer:
    def __init__(self):
        self.files = {}
        self.requests = []  # (path, Range header or None)
        self.closing = threading.Event()  # wakes the handlers that stall or trickle
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
        headers = []
        if match and not behaviour.ignore_range:
            start = int(match.group(1))
            if start >= len(data):
                handler.send_response(416)
                handler.send_header('Content-Range', f'bytes */{len(data)}')
                handler.send_header('Content-Length', '0')
                handler.end_headers()
                return
            status = 206
            headers.append(('Content-Range', f'bytes {start}-{len(data) - 1}/{len(data)}'))
        else:
            status = 200
        if behaviour.content_length is REAL:
            headers.append(('Content-Length', str(len(data) - start)))
        elif behaviour.content_length is not None:
            headers.append(('Content-Length', str(behaviour.content_length)))
        headers.append(('Content-Type', 'application/octet-stream'))
        if behaviour.content_encoding:
            headers.append(('Content-Encoding', behaviour.content_encoding))
        if behaviour.header_trickle is not None:
            self.trickle_head(handler, status, headers, behaviour.header_trickle)
            return
        handler.send_response(status)
        for name, value in headers:
            handler.send_header(name, value)
        handler.end_headers()
        time.sleep(behaviour.first_byte_delay)

        end = len(data) - behaviour.short_by
        drop = behaviour.drop_after
        if drop is not None and start < drop < end:
            end = drop
            behaviour.drop_after = None  # once
        stall = behaviour.stall_after
        if stall is not None:
            if behaviour.stall_once:
                behaviour.stall_after = None
            handler.wfile.write(data[start:start + stall])
            handler.wfile.flush()
            self.closing.wait()
            return
        if behaviour.trickle is not None:
            for position in range(start, end):
                handler.wfile.write(data[position:position + 1])
                handler.wfile.flush()
                if self.closing.wait(behaviour.trickle):
                    return
            return
        position = start
        while position < end:
            piece = data[position:min(position + CHUNK, end)]
            handler.wfile.write(piece)
            position += len(piece)
            if behaviour.delay:
                handler.wfile.flush()
                time.sleep(behaviour.delay)
        if behaviour.endless:
            zeros = bytes(CHUNK)
            while not self.closing.is_set():
                handler.wfile.write(zeros)
                if behaviour.delay:
                    time.sleep(behaviour.delay)
            return
        handler.wfile.flush()
        if end < len(data):
            # End the connection here, as a network failure would: the client sees the body stop.
            handler.close_connection = True
            try:
                handler.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def trickle_head(self, handler, status, headers, seconds):
        """The status line and headers a byte at a time: each byte renews the client's socket
        timeout, so only a deadline on the whole response ends the wait."""
        head = f'HTTP/1.0 {status} OK\r\n' + ''.join(f'{n}: {v}\r\n' for n, v in headers) + '\r\n'
        for byte in head.encode('latin-1'):
            handler.wfile.write(bytes([byte]))
            handler.wfile.flush()
            if self.closing.wait(seconds):
                return

    def close(self):
        self.closing.set()
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


class Overdue(Exception):
    """A test ran past its deadline."""


@contextlib.contextmanager
def deadline(seconds):
    """Raise Overdue in the test's (main) thread if the block runs longer than `seconds`: a hang
    fails the test instead of holding the whole run."""
    def overdue(signum, frame):
        raise Overdue(f'still running after {seconds} s')

    previous = signal.signal(signal.SIGALRM, overdue)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
