"""Serves the browser restorer (web/) and one ticket's web bundle on 127.0.0.1.

The page restores photos in the browser with onnxruntime-web: nothing the user picks is uploaded.
The server answers GET and HEAD for a fixed set of URLs only, each mapped to one file when the
server starts; a request path is never joined onto a folder, so no spelling of `..` (encoded,
doubled, with backslashes) can reach another file: anything not in the table is 404.

  /, /index.html, /app.js, /style.css   web/
  /ort/<file>                           the few onnxruntime-web files the page loads (RUNTIME_FILES)
  /model/<file>                         the bundle's manifest.json and the files it names
                                        (graph, mask, values: never the dense weights)

Every answer carries Cross-Origin-Opener-Policy and -Embedder-Policy so that the page is
cross-origin isolated: the threaded wasm runtime needs SharedArrayBuffer.
"""

from __future__ import annotations

import http.server
import json
import os
from pathlib import Path

import mirl_jax
from mirl_jax.web_export import FORMAT as BUNDLE_FORMAT, MANIFEST

WEB_DIR = Path(mirl_jax.__file__).parents[1] / "web"
PAGE_FILES = {
    "/": "index.html",
    "/index.html": "index.html",
    "/app.js": "app.js",
    "/style.css": "style.css",
}
#: What web/app.js loads: the wasm build's ES module, which loads the threaded glue and binary.
RUNTIME_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
#: Manifest entries naming the files the page downloads (mask: null for a dense ticket).
BUNDLE_KEYS = ("graph", "mask", "values")
MIME_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".wasm": "application/wasm",
}
#: The system browser the page is tested and pictured with (Debian's `chromium`), and how to
#: start it headless as root on a machine without outside network: without the background
#: networking flags, Chromium's many refused connections slow it down.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",  # a new bundle in the same folder is picked up on reload
}


def check_runtime(web_dir=None) -> Path:
  """web/node_modules/onnxruntime-web/dist, or FileNotFoundError saying how to install it."""
  web_dir = Path(web_dir) if web_dir is not None else WEB_DIR
  dist = web_dir / "node_modules" / "onnxruntime-web" / "dist"
  missing = [name for name in RUNTIME_FILES if not (dist / name).is_file()]
  if missing:
    raise FileNotFoundError(
        f"{dist / missing[0]}: onnxruntime-web is not installed (expected the page's runtime "
        f"in {dist}): run `npm ci --prefix {web_dir}`"
    )
  return dist


def _plain_name(name) -> bool:
  """A file name with no folder part: the only kind a manifest may name."""
  return (
      isinstance(name, str)
      and name not in ("", ".", "..")
      and "/" not in name
      and "\\" not in name
      and "\0" not in name
  )


def bundle_files(bundle_dir: Path) -> dict[str, Path]:
  """{name: path} of the bundle's files the page may download, checked against its manifest."""
  bundle_dir = Path(bundle_dir)
  manifest_path = bundle_dir / MANIFEST
  if not manifest_path.is_file():
    raise FileNotFoundError(
        f"{manifest_path}: no web bundle there (expected manifest.json and the files it names, "
        "as mirl_jax.web_export.write_bundle writes them)"
    )
  try:
    manifest = json.loads(manifest_path.read_text())
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
    raise ValueError(f"{manifest_path}: not a readable JSON manifest ({error})") from error
  if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
    found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
    raise ValueError(f"{manifest_path}: format {found!r} (expected {BUNDLE_FORMAT!r})")
  files = {MANIFEST: manifest_path}
  for key in BUNDLE_KEYS:
    name = manifest.get(key)
    if key == "mask" and name is None:  # a dense ticket: the values are the whole weights file
      continue
    if not _plain_name(name) or name == manifest.get("external_data"):
      raise ValueError(f"{manifest_path}: {key}={name!r} (expected a file name in {bundle_dir})")
    if not (bundle_dir / name).is_file():
      raise FileNotFoundError(f"{bundle_dir / name}: missing (named by {manifest_path})")
    files[name] = bundle_dir / name
  return files


def routes(bundle_dir, web_dir=None) -> dict[str, Path]:
  """The whole URL table: {exact request path: file}. Raises if anything the page needs is gone."""
  web_dir = Path(web_dir) if web_dir is not None else WEB_DIR
  table = {url: web_dir / name for url, name in PAGE_FILES.items()}
  for path in table.values():
    if not path.is_file():
      raise FileNotFoundError(f"{path}: the page's file is missing (expected it in {web_dir})")
  dist = check_runtime(web_dir)
  table.update({f"/ort/{name}": dist / name for name in RUNTIME_FILES})
  table.update({f"/model/{name}": path for name, path in bundle_files(bundle_dir).items()})
  return table


class Handler(http.server.BaseHTTPRequestHandler):
  """GET/HEAD of the files in `self.server.routes`; 404 for any other path, 405 other methods."""

  server_version = "mirl_jax-serve"

  def _send(self, body: bool) -> None:
    # The request line's own target: self.path has had leading slashes collapsed. Its query (a
    # cache-buster, say) is ignored; the rest must match the table exactly.
    target = self.requestline.split()[1]
    path = self.server.routes.get(target.split("?", 1)[0])
    if path is None or not path.is_file():
      self._answer(404, b"404 Not found\n", "text/plain; charset=utf-8")
    else:
      mime = MIME_TYPES.get(path.suffix.lower(), "application/octet-stream")
      self._answer(200, path.read_bytes(), mime, body)

  def _answer(self, code: int, data: bytes, mime: str, body: bool = True) -> None:
    self.send_response(code)
    headers = {"Content-Type": mime, "Content-Length": str(len(data)), **HEADERS}
    if code == 405:
      headers["Allow"] = "GET, HEAD"
    for name, value in headers.items():
      self.send_header(name, value)
    self.end_headers()
    if body and self.command != "HEAD":
      self.wfile.write(data)

  def do_GET(self):  # pylint: disable=invalid-name
    self._send(body=True)

  def do_HEAD(self):  # pylint: disable=invalid-name
    self._send(body=False)

  def __getattr__(self, name):
    # BaseHTTPRequestHandler looks up do_<METHOD>: every method but GET and HEAD gets 405.
    if name.startswith("do_"):
      return lambda: self._answer(405, b"405 Method not allowed\n", "text/plain; charset=utf-8")
    raise AttributeError(name)

  def log_message(self, format, *args):  # pylint: disable=redefined-builtin
    if not self.server.quiet:
      super().log_message(format, *args)


class Server(http.server.ThreadingHTTPServer):
  daemon_threads = True  # a browser's open keep-alive connection never holds up shutdown
  routes: dict[str, Path]
  quiet: bool

  @property
  def url(self) -> str:
    host, port = self.server_address[:2]
    return f"http://{host}:{port}/"


def make_server(
    bundle_dir, web_dir=None, host: str = "127.0.0.1", port: int = 8000, quiet: bool = False
) -> Server:
  """A bound (not yet serving) server for `bundle_dir`; port 0 picks a free port (see .url)."""
  table = routes(bundle_dir, web_dir)  # every check before the port is taken
  try:
    server = Server((host, port), Handler)
  except OSError as error:
    raise ValueError(
        f"cannot listen on {host}:{port} ({error.strerror or error}): choose another port "
        "(--config.serve.port)"
    ) from error
  server.routes, server.quiet = table, quiet
  return server


def serve(bundle_dir, web_dir=None, host: str = "127.0.0.1", port: int = 8000) -> None:
  """Serves until Ctrl-C, having printed the URL to open."""
  server = make_server(bundle_dir, web_dir, host, port)
  print(f"Serving the restorer for {os.fspath(bundle_dir)} at {server.url} (Ctrl-C to stop)")
  try:
    server.serve_forever()
  except KeyboardInterrupt:
    pass
  finally:
    server.server_close()
