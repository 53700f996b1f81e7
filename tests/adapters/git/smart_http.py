"""Git smart HTTP for the git tests: `git http-backend` behind HTTP Basic auth, on loopback.

Usage: smart_http.py PROJECT_ROOT PORT_FILE  (the expected password is read from the env var
KILN_TEST_HTTP_PASSWORD; every Authorization header seen is appended to PROJECT_ROOT/auth.log
so a test can check what the client sent, and whether it sent anything at all).
"""
import base64
import http.server
import os
import subprocess
import sys

ROOT, PORT_FILE = sys.argv[1], sys.argv[2]
PASSWORD = os.environ["KILN_TEST_HTTP_PASSWORD"]
BACKEND = os.path.join(
    subprocess.check_output(["git", "--exec-path"], text=True).strip(), "git-http-backend"
)


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _authorized(self):
        header = self.headers.get("Authorization")
        with open(os.path.join(ROOT, "auth.log"), "a") as log:
            log.write(f"{self.command} {self.path} {header}\n")
        if not header or not header.startswith("Basic "):
            return None
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        return user if password == PASSWORD else None

    def _serve(self):
        user = self._authorized()
        if user is None:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="kiln-test"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path, _, query = self.path.partition("?")
        length = int(self.headers.get("Content-Length") or 0)
        if self.headers.get("Transfer-Encoding") == "chunked":
            body = b""
            while True:
                size = int(self.rfile.readline().strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    break
                body += self.rfile.read(size)
                self.rfile.readline()
        else:
            body = self.rfile.read(length) if length else b""
        env = dict(
            os.environ,
            GIT_PROJECT_ROOT=ROOT,
            GIT_HTTP_EXPORT_ALL="1",
            PATH_INFO=path,
            QUERY_STRING=query,
            REQUEST_METHOD=self.command,
            CONTENT_TYPE=self.headers.get("Content-Type", ""),
            CONTENT_LENGTH=str(len(body)),
            REMOTE_USER=user,
            REMOTE_ADDR="127.0.0.1",
            GIT_PROTOCOL=self.headers.get("Git-Protocol", ""),
            HTTP_CONTENT_ENCODING=self.headers.get("Content-Encoding", ""),
        )
        out = subprocess.run([BACKEND], input=body, env=env, capture_output=True).stdout
        head, _, payload = out.partition(b"\r\n\r\n")
        status = 200
        headers = []
        for line in head.decode().split("\r\n"):
            name, _, value = line.partition(": ")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                headers.append((name, value))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = _serve
    do_POST = _serve


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
with open(PORT_FILE + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
os.rename(PORT_FILE + ".tmp", PORT_FILE)
server.serve_forever()
