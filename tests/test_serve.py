"""mirl_jax.serve: only its URL table is served, with the right types and isolation headers.

Fast and browser-free: a stand-in web/ folder (page files and fake runtime files) and a
stand-in bundle, each beside files that must never be served, so that a leak shows as bytes.
"""

import http.client
import inspect
import json
import re
import socket

import pytest

from conftest import serving
from mirl_jax import serve

SECRET = b"SECRET-BYTES-THAT-MUST-NEVER-BE-SERVED"
RUNTIME_SUBFOLDER_FILE = "esm/ort.min.mjs"


def _write(path, data: bytes):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(data)
  return path


def make_tree(tmp_path):
  """tmp/{web, bundle} holding the served files; secrets inside, beside and above both."""
  web = tmp_path / "repo" / "web"
  for name in ("index.html", "app.js", "style.css"):
    _write(web / name, f"page file {name}".encode())
  _write(web / "package.json", SECRET)
  dist = web / "node_modules" / "onnxruntime-web" / "dist"
  for name in serve.RUNTIME_FILES:
    _write(dist / name, f"runtime {name}".encode())
  _write(dist / "ort.all.min.mjs", SECRET)  # in dist, but not a file the page loads
  _write(dist / RUNTIME_SUBFOLDER_FILE, SECRET)
  _write(web / "node_modules" / "onnxruntime-web" / "package.json", SECRET)
  bundle = tmp_path / "bundle"
  manifest = {
      "format": serve.BUNDLE_FORMAT,
      "ticket": 2,
      "tile": 128,
      "overlap": 32,
      "graph": "graph.onnx",
      "external_data": "weights.data",
      "mask": "weights.mask",
      "values": "weights.values",
  }
  _write(bundle / "manifest.json", json.dumps(manifest).encode())
  for name in ("graph.onnx", "weights.mask", "weights.values"):
    _write(bundle / name, f"bundle {name}".encode())
  _write(bundle / "weights.data", SECRET)  # the dense weights: rebuilt by the page, never sent
  _write(bundle / "notes.txt", SECRET)
  _write(tmp_path / "secret.txt", SECRET)
  _write(tmp_path / "repo" / "secret.txt", SECRET)
  return web, bundle


@pytest.fixture
def tree(tmp_path):
  return make_tree(tmp_path)


@pytest.fixture(scope="module")
def served_tree(tmp_path_factory):
  return make_tree(tmp_path_factory.mktemp("served"))


@pytest.fixture(scope="module")
def server(served_tree):
  """One server for the tests that only send requests."""
  web, bundle = served_tree
  with serving(serve.make_server(bundle, web_dir=web, port=0, quiet=True)) as srv:
    yield srv


def request(srv, target: str, method: str = "GET"):
  """(status, headers, body) for a raw request target, sent byte for byte (no client cleanup)."""
  with socket.create_connection(srv.server_address[:2], timeout=10) as sock:
    line = f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    sock.sendall(line.encode("latin-1"))
    response = http.client.HTTPResponse(sock, method=method)
    response.begin()
    return response.status, response.headers, response.read()


SERVED = {
    "/": (b"page file index.html", "text/html; charset=utf-8"),
    "/index.html": (b"page file index.html", "text/html; charset=utf-8"),
    "/app.js": (b"page file app.js", "text/javascript; charset=utf-8"),
    "/style.css": (b"page file style.css", "text/css; charset=utf-8"),
    "/ort/ort.wasm.min.mjs": (b"runtime ort.wasm.min.mjs", "text/javascript; charset=utf-8"),
    "/ort/ort-wasm-simd-threaded.mjs": (
        b"runtime ort-wasm-simd-threaded.mjs",
        "text/javascript; charset=utf-8",
    ),
    "/ort/ort-wasm-simd-threaded.wasm": (
        b"runtime ort-wasm-simd-threaded.wasm",
        "application/wasm",
    ),
    "/model/graph.onnx": (b"bundle graph.onnx", "application/octet-stream"),
    "/model/weights.mask": (b"bundle weights.mask", "application/octet-stream"),
    "/model/weights.values": (b"bundle weights.values", "application/octet-stream"),
}


@pytest.mark.parametrize("target", sorted(SERVED))
def test_the_whitelist_is_served_with_its_mime_type(server, target):
  body, mime = SERVED[target]
  status, headers, data = request(server, target)
  assert (status, data, headers["Content-Type"]) == (200, body, mime)
  assert headers["Content-Length"] == str(len(body))


def test_the_manifest_is_served_as_json(server, served_tree):
  status, headers, data = request(server, "/model/manifest.json")
  assert status == 200 and headers["Content-Type"] == "application/json"
  assert data == (served_tree[1] / "manifest.json").read_bytes()


def test_a_query_string_is_ignored(server):
  status, _, data = request(server, "/app.js?v=3")
  assert (status, data) == (200, b"page file app.js")


def test_every_answer_is_cross_origin_isolated(server):
  for target in ("/", "/ort/ort-wasm-simd-threaded.wasm", "/model/graph.onnx", "/nothing"):
    _, headers, _ = request(server, target)
    assert headers["Cross-Origin-Opener-Policy"] == "same-origin", target
    assert headers["Cross-Origin-Embedder-Policy"] == "require-corp", target


TRAVERSALS = [
    "/../secret.txt",
    "/../../secret.txt",
    "/model/../../secret.txt",
    "/model/../secret.txt",
    "/model/weights.data",
    "/model/notes.txt",
    "/model/./graph.onnx",
    "/model//graph.onnx",
    "/model/%2e%2e/secret.txt",
    "/model/%2e%2e%2fsecret.txt",
    "/model/..%2fsecret.txt",
    "/model/..%2f..%2fsecret.txt",
    "/model/%252e%252e/secret.txt",
    "/model/%252e%252e%252fsecret.txt",
    "/model/..\\secret.txt",
    "/model/..%5csecret.txt",
    "/model/%2e%2e%5c%2e%2e%5csecret.txt",
    "/model/graph.onnx%00",
    "/model/graph.onnx\x00.txt",
    "/app.js%00",
    "/ort/../package.json",
    "/ort/..%2fpackage.json",
    "/ort/%2e%2e/%2e%2e/package.json",
    "/ort/ort.all.min.mjs",
    f"/ort/{RUNTIME_SUBFOLDER_FILE}",
    "/ort/esm%2fort.min.mjs",
    "/ort/",
    "/ort",
    "/model/",
    "/node_modules/onnxruntime-web/package.json",
    "/web/index.html",
    "/package.json",
    "/secret.txt",
    "//secret.txt",
    "//app.js",
    "///index.html",
    "/.//app.js",
    "/./app.js",
    "/%2e/app.js",
    "/%61pp.js",
    "/APP.JS",
    "/app.js/",
    "/app.js/..",
    "\\app.js",
    "/..",
    "/%2e%2e",
    "/etc/passwd",
    "//etc/passwd",
    "/" + "/".join([".."] * 12) + "/etc/passwd",
    "/model/%2Fetc%2Fpasswd",
    "http://127.0.0.1/secret.txt",
    "*",
]


@pytest.mark.parametrize("target", TRAVERSALS)
def test_everything_else_is_404_and_leaks_nothing(server, target):
  for method in ("GET", "HEAD"):
    status, _, data = request(server, target, method)
    assert status == 404, (target, method)
    assert SECRET not in data
    assert b"runtime" not in data and b"bundle" not in data and b"page file" not in data


def test_head_sends_the_headers_without_the_body(server):
  status, headers, data = request(server, "/ort/ort-wasm-simd-threaded.wasm", "HEAD")
  assert (status, data, headers["Content-Type"]) == (200, b"", "application/wasm")
  assert headers["Content-Length"] == str(len(SERVED["/ort/ort-wasm-simd-threaded.wasm"][0]))


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_other_methods_are_405(server, method):
  status, headers, data = request(server, "/model/graph.onnx", method)
  assert status == 405 and headers["Allow"] == "GET, HEAD"
  assert b"bundle" not in data


def test_it_binds_127_0_0_1_by_default(tree):
  assert inspect.signature(serve.make_server).parameters["host"].default == "127.0.0.1"
  assert inspect.signature(serve.serve).parameters["host"].default == "127.0.0.1"
  web, bundle = tree
  srv = serve.make_server(bundle, web_dir=web, port=0, quiet=True)
  try:
    assert srv.server_address[0] == "127.0.0.1"
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", srv.url)
  finally:
    srv.server_close()


def test_serve_prints_the_url_and_stops_on_ctrl_c(tree, monkeypatch, capsys):
  web, bundle = tree

  def interrupted(self, poll_interval=0.5):
    del self, poll_interval
    raise KeyboardInterrupt

  monkeypatch.setattr(serve.Server, "serve_forever", interrupted)
  serve.serve(bundle, web_dir=web, port=0)  # Ctrl-C ends it quietly
  assert re.search(r"http://127\.0\.0\.1:\d+/", capsys.readouterr().out)


def test_the_missing_runtime_says_how_to_install_it(tree):
  web, bundle = tree
  for name in serve.RUNTIME_FILES:
    (web / "node_modules" / "onnxruntime-web" / "dist" / name).unlink()
  with pytest.raises(FileNotFoundError) as error:
    serve.make_server(bundle, web_dir=web, port=0)
  message = str(error.value)
  assert "\n" not in message
  assert f"npm ci --prefix {web}" in message
  assert str(web / "node_modules" / "onnxruntime-web" / "dist") in message


def test_the_default_web_folder_is_the_repository_s(tree):
  assert serve.WEB_DIR == serve.Path(serve.mirl_jax.__file__).parents[1] / "web"
  for name in serve.PAGE_FILES.values():
    assert (serve.WEB_DIR / name).is_file(), name


def test_the_page_loads_only_runtime_files_the_server_serves():
  """app.js's imports from /ort/ and the runtime's own loads are all in RUNTIME_FILES."""
  imported = re.findall(r"""["']/ort/([^"']+)["']""", (serve.WEB_DIR / "app.js").read_text())
  assert imported and set(imported) <= set(serve.RUNTIME_FILES)
  dist = serve.WEB_DIR / "node_modules" / "onnxruntime-web" / "dist"
  if not dist.is_dir():
    pytest.skip(f"onnxruntime-web not installed in {dist}: run `npm ci --prefix web`")
  serve.check_runtime()  # every whitelisted file is there
  entry = (dist / imported[0]).read_text()
  assert "ort-wasm-simd-threaded" in entry  # the glue and binary it loads from wasmPaths


@pytest.mark.parametrize(
    "change, error",
    [
        ({"format": "mirl_jax-web/0"}, "format"),
        ({"graph": "../graph.onnx"}, "graph="),
        ({"mask": "sub/weights.mask"}, "mask="),
        ({"values": "/etc/passwd"}, "values="),
        ({"values": "weights.data"}, "values="),  # the dense weights are never served
        ({"graph": "absent.onnx"}, "missing"),
    ],
)
def test_a_bad_manifest_is_refused_in_one_line(tree, change, error):
  web, bundle = tree
  manifest = json.loads((bundle / "manifest.json").read_text())
  manifest.update(change)
  (bundle / "manifest.json").write_text(json.dumps(manifest))
  with pytest.raises((ValueError, FileNotFoundError), match=re.escape(error)) as raised:
    serve.make_server(bundle, web_dir=web, port=0)
  assert "\n" not in str(raised.value)


def test_a_folder_without_a_bundle_is_refused(tree, tmp_path):
  web, _ = tree
  with pytest.raises(FileNotFoundError, match="no web bundle"):
    serve.make_server(tmp_path / "empty", web_dir=web, port=0)


def test_a_port_in_use_is_refused_in_one_line(tree, server):
  web, bundle = tree
  port = server.server_address[1]
  with pytest.raises(ValueError, match=f"cannot listen on 127.0.0.1:{port}") as raised:
    serve.make_server(bundle, web_dir=web, port=port)
  assert "\n" not in str(raised.value)


def test_a_dense_bundle_has_no_mask_to_serve(tree):
  web, bundle = tree
  manifest = json.loads((bundle / "manifest.json").read_text())
  (bundle / "manifest.json").write_text(json.dumps({**manifest, "mask": None}))
  (bundle / "weights.mask").unlink()
  assert set(serve.bundle_files(bundle)) == {"manifest.json", "graph.onnx", "weights.values"}
  assert "/model/weights.mask" not in serve.routes(bundle, web)
