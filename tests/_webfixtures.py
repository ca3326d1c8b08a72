"""A tiny web server on 127.0.0.1 for tests: real photos and every way a download can go wrong.

    with LoopbackServer() as web:
        web.add('/cat.jpg', jpeg_bytes)
        web.add('/gone', status=404)
        web.redirect('/old', '/cat.jpg')
        requests.get(web.url('/cat.jpg')); web.hits['/cat.jpg'] == 1

Bound to 127.0.0.1 on an ephemeral port, served from a daemon thread, one thread per request (a
slow route never blocks the others). Nothing here touches the outside network.
"""
import io, socket, struct, threading, time, zlib
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ['LoopbackServer', 'image_bytes', 'png_bomb', 'closed_port_url']


def image_bytes(im, fmt='JPEG', size=None, **save_kw) -> bytes:
    "`im` (PIL) re-encoded as `fmt`, optionally resized so that its longer side is `size`"
    if size:
        im = im.copy()
        w, h = im.size
        s = size / max(w, h)
        im = im.resize((max(1, round(w * s)), max(1, round(h * s))))
    if fmt == 'JPEG' and im.mode != 'RGB': im = im.convert('RGB')
    b = io.BytesIO()
    im.save(b, fmt, **save_kw)
    return b.getvalue()


def png_bomb(width=20000, height=20000) -> bytes:
    "A valid ~100-byte PNG whose header declares `width` x `height` pixels (a decompression bomb)"
    def chunk(kind, data):
        return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data) & 0xffffffff)
    ihdr = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)      # 8-bit RGB
    idat = zlib.compress(b'\x00' + b'\x00' * 3 * 16)                     # a token first row
    return b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', ihdr) + chunk(b'IDAT', idat) + chunk(b'IEND', b'')


def closed_port_url(path='/x.jpg') -> str:
    "A loopback URL on a port where nothing listens (connection refused)"
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
    s.close()
    return f'http://127.0.0.1:{port}{path}'


class _Route:
    def __init__(self, body=b'', status=200, content_type='image/jpeg', headers=None, delay=0.,
                 trickle=None, send_length=True):
        self.body, self.status, self.content_type = body, status, content_type
        self.headers, self.delay, self.trickle, self.send_length = headers or {}, delay, trickle, send_length


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):   # clients hanging up early is what the tests do
        import sys
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)): super().handle_error(request, client_address)


class LoopbackServer:
    "HTTP server on 127.0.0.1:<ephemeral> with programmable routes and a hit counter per path"
    def __init__(self):
        self.routes, self.hits, self._lock = {}, Counter(), threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = 'HTTP/1.1'
            def log_message(self, *args): pass
            def do_GET(self):
                path = self.path.split('?')[0]
                with server._lock: server.hits[path] += 1
                r = server.routes.get(path) or _Route(b'no such route', 404, 'text/plain')
                try:
                    if r.delay: time.sleep(r.delay)
                    self.send_response(r.status)
                    self.send_header('Content-Type', r.content_type)
                    for k, v in r.headers.items(): self.send_header(k, v)
                    if r.send_length: self.send_header('Content-Length', str(len(r.body)))
                    else: self.send_header('Connection', 'close')
                    self.end_headers()
                    if r.trickle:                      # (pieces, seconds between pieces)
                        n, pause = r.trickle
                        step = max(1, len(r.body) // n)
                        for i in range(0, len(r.body), step):
                            self.wfile.write(r.body[i:i + step]); self.wfile.flush(); time.sleep(pause)
                    else: self.wfile.write(r.body)
                    if not r.send_length: self.close_connection = True
                except (BrokenPipeError, ConnectionResetError): pass

        self.httpd = _QuietServer(('127.0.0.1', 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        self.port = self.httpd.server_address[1]
        self._thread = None

    def url(self, path): return f'http://127.0.0.1:{self.port}{path}'
    def add(self, path, body=b'', **kw): self.routes[path] = _Route(body, **kw); return self.url(path)
    def redirect(self, path, to, status=302):
        self.routes[path] = _Route(b'', status, 'text/html', {'Location': to}); return self.url(path)
    @property
    def total_hits(self): return sum(self.hits.values())

    def start(self):
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs=dict(poll_interval=0.05), daemon=True)
        self._thread.start()
        return self
    def stop(self):
        self.httpd.shutdown(); self.httpd.server_close()
    def __enter__(self): return self.start()
    def __exit__(self, *exc): self.stop()
