// Restores a photo in this browser with a mirl_jax ticket and onnxruntime-web.
//
// The model comes as a "web bundle" (mirl_jax/web_export.py, served under /model/ by
// mirl_jax/serve.py): the ONNX graph, whose float32 weights live in an external file that is never
// downloaded, plus that file's non-zero words and one bit per word saying where they go. A pruned
// ticket thus costs its survivors plus 1/32 of the dense size.
//
// The tiling mirrors mirl_jax/restore.py's restore_array operation for operation (float32
// arithmetic, same order), and the 8-bit output mirrors mirl_jax/images.py's encode_picture, so
// that the page and `--mode restore` agree up to the two runtimes' own rounding.

import * as ort from "/ort/ort.wasm.min.mjs";

const BUNDLE_FORMAT = "mirl_jax-web/1";
const MULTIPLE = 8; // restore.py's MULTIPLE: the network halves the image three times
const MAX_MEGAPIXELS = 16; // a 16-megapixel photo already needs ~0.5 GB of float buffers here
const MAX_PIXELS = MAX_MEGAPIXELS * 1e6;

const $ = (id) => document.getElementById(id);
let session = null;
let manifest = null;
let busy = false;
const objectUrls = []; // the previous result's blobs, released when a new one comes

// ---------------------------------------------------------------------------------------------
// Small helpers.

function formatBytes(n) {
  if (n < 1e3) return `${n} B`;
  if (n < 1e6) return `${(n / 1e3).toFixed(1)} kB`;
  return `${(n / 1e6).toFixed(1)} MB`;
}

function setStatus(text) {
  $("status").textContent = text;
}

function showError(text) {
  $("error").textContent = text;
  $("error").hidden = false;
}

function clearError() {
  $("error").textContent = "";
  $("error").hidden = true;
}

function setProgress(done, total) {
  $("progress").max = Math.max(total, 1);
  $("progress").value = done;
  $("progress-text").textContent = total ? `tile ${done} of ${total}` : "";
}

// numpy's rint: round half to even (Math.round rounds halves up).
function rint(x) {
  const r = Math.round(x);
  return r - x === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

// ---------------------------------------------------------------------------------------------
// The model: manifest, bundle files, dense weights rebuilt from mask + survivors, session.

async function fetchBytes(name) {
  const response = await fetch(`/model/${encodeURIComponent(name)}`);
  if (!response.ok) throw new Error(`/model/${name}: HTTP ${response.status}`);
  return new Uint8Array(await response.arrayBuffer());
}

// Rebuilds the dense external-data file: word i is the next survivor where bit i of the mask is
// set (byte i >> 3, bit i & 7, little-endian bit order), else 0. Words are copied as Uint32 so
// every weight keeps its exact bits (-0.0 included: the mask marks words with any bit set). A
// bundle without a mask (a dense ticket, where the mask would cost more than the zeros it spares)
// ships the whole file as its values.
export function expandWeights(mask, values, floats, survivors) {
  if (values.byteLength !== survivors * 4) {
    throw new Error(`the values have ${values.byteLength} bytes, expected ${survivors * 4}`);
  }
  if (mask === null) {
    if (survivors !== floats) throw new Error(`no mask, but ${survivors} survivors of ${floats} weights`);
    return values;
  }
  if (mask.byteLength !== Math.ceil(floats / 8)) {
    throw new Error(`the mask has ${mask.byteLength} bytes, expected ${Math.ceil(floats / 8)}`);
  }
  // A fresh copy is 4-byte aligned whatever the source view's offset (float32 is little-endian
  // on the wire, as in every browser's memory).
  const source = new Uint32Array(values.slice().buffer);
  const dense = new Uint32Array(floats);
  let k = 0;
  for (let byte = 0; byte < mask.length; byte++) {
    let bits = mask[byte];
    if (bits === 0) continue; // runs of pruned weights cost one test per 8 words
    const base = byte * 8;
    for (let bit = 0; bits !== 0; bit++, bits >>= 1) {
      if (!(bits & 1)) continue;
      if (base + bit >= floats || k >= survivors) throw new Error("the mask sets bits past its weights");
      dense[base + bit] = source[k++];
    }
  }
  if (k !== survivors) throw new Error(`the mask sets ${k} bits for ${survivors} survivors`);
  return new Uint8Array(dense.buffer);
}

async function loadModel() {
  const response = await fetch("/model/manifest.json");
  if (!response.ok) throw new Error(`/model/manifest.json: HTTP ${response.status}`);
  const manifestBytes = new Uint8Array(await response.arrayBuffer());
  manifest = JSON.parse(new TextDecoder().decode(manifestBytes));
  if (manifest.format !== BUNDLE_FORMAT) {
    throw new Error(`the bundle's format is ${JSON.stringify(manifest.format)}, expected ${BUNDLE_FORMAT}`);
  }
  if (manifest.layout !== "NHWC") throw new Error(`the graph's layout is ${manifest.layout}, expected NHWC`);
  checkTiling(manifest.tile, manifest.overlap);

  const names = [manifest.graph, manifest.mask, manifest.values]; // mask: null for a dense ticket
  const planned = names.reduce((sum, name) => sum + (manifest.bytes?.[name] ?? 0), 0);
  let downloaded = manifestBytes.byteLength;
  const [graph, mask, values] = await Promise.all(
    names.map(async (name) => {
      if (name === null) return null;
      const bytes = await fetchBytes(name);
      downloaded += bytes.byteLength;
      $("model-status").textContent =
        `Downloading the model: ${formatBytes(downloaded)}` + (planned ? ` of ${formatBytes(planned)}` : "");
      return bytes;
    }),
  );

  $("model-status").textContent = "Expanding the weights…";
  const weights = expandWeights(mask, values, manifest.floats, manifest.survivors);

  // Threads need SharedArrayBuffer, which needs the COOP/COEP headers that serve.py sends.
  const threads = self.crossOriginIsolated ? navigator.hardwareConcurrency || 1 : 1;
  ort.env.wasm.wasmPaths = "/ort/";
  ort.env.wasm.numThreads = threads;
  $("model-status").textContent = "Starting onnxruntime…";
  session = await ort.InferenceSession.create(graph, {
    executionProviders: ["wasm"],
    externalData: [{ path: manifest.external_data, data: weights }],
  });

  const kept = (100 * manifest.survivors) / Math.max(manifest.floats, 1);
  $("info-ticket").textContent = `${manifest.ticket}`;
  $("info-survivors").textContent =
    `${manifest.survivors.toLocaleString("en")} of ${manifest.floats.toLocaleString("en")} (${kept.toFixed(2)}%)`;
  const parts = [`graph ${formatBytes(graph.byteLength)}`];
  if (mask) parts.push(`mask ${formatBytes(mask.byteLength)}`);
  parts.push(`${mask ? "survivors" : "weights"} ${formatBytes(values.byteLength)}`);
  // The dense ONNX model's size where the bundle says it, else that of the dense weights alone.
  const denseSize = manifest.bytes?.dense_onnx ?? manifest.floats * 4;
  $("info-bytes").textContent =
    `${formatBytes(downloaded)} (${parts.join(", ")}) instead of ${formatBytes(denseSize)} for the dense model`;
  $("info-tile").textContent = `${manifest.tile} × ${manifest.tile} pixels, overlap ${manifest.overlap}`;
  $("info-threads").textContent = `${threads}` + (self.crossOriginIsolated ? "" : " (the page is not cross-origin isolated)");
  $("model-info").hidden = false;
  $("model-status").textContent = "Model ready: pick or drop a photo.";
}

// ---------------------------------------------------------------------------------------------
// Tiling: restore.py's _check_tiling, _pad_to_multiple, _starts and _window.

function checkTiling(tile, overlap) {
  if (!Number.isInteger(tile) || !Number.isInteger(overlap) || tile % MULTIPLE || overlap % MULTIPLE ||
      !(overlap >= 0 && overlap < tile / 2)) {
    throw new Error(`the bundle's tile (${tile}) and overlap (${overlap}) must be multiples of ${MULTIPLE} ` +
      "with 0 <= overlap < tile / 2");
  }
}

// Where np.pad takes sample i (>= 0) of an axis of length n padded at its end only: "reflect"
// mirrors about the last sample without repeating it (period 2(n - 1)), "edge" repeats it.
function padIndex(i, n, mode) {
  if (i < n) return i;
  if (mode === "edge" || n === 1) return n - 1;
  const period = 2 * (n - 1);
  const j = i % period;
  return j < n ? j : period - j;
}

// restore._starts: tile origins covering [0, length) with the last tile flush to the end.
function starts(length, tile, overlap) {
  if (length <= tile) return [0];
  const out = [];
  for (let s = 0; s < length - tile; s += tile - overlap) out.push(s);
  out.push(length - tile);
  return out;
}

// restore._window: 1 in the middle, ramping to ~0 over `overlap` pixels at each edge (float32).
function windowRamp(size, overlap) {
  const w = new Float32Array(size).fill(1);
  if (overlap > 0 && size > 2 * overlap) {
    for (let k = 0; k < overlap; k++) {
      const ramp = Math.fround((k + 0.5) / overlap);
      w[k] = ramp;
      w[size - 1 - k] = ramp;
    }
  }
  return w;
}

// restore_array on 8-bit RGBA pixels, tile by tile through the session; returns 8-bit RGBA.
async function restorePixels(rgba, width, height, onTile) {
  const T = manifest.tile;
  const overlap = manifest.overlap;
  const h = height;
  const w = width;

  // read_picture: value / float32(255); a Float32Array store rounds the exact quotient once, as
  // numpy's float32 division does.
  const rgb = new Float32Array(h * w * 3);
  for (let p = 0, q = 0; p < h * w; p++, q += 4) {
    rgb[3 * p] = rgba[q] / 255;
    rgb[3 * p + 1] = rgba[q + 1] / 255;
    rgb[3 * p + 2] = rgba[q + 2] / 255;
  }

  // _pad_to_multiple: pad bottom/right to a multiple of 8, reflect unless the image is too small.
  const ph = h + (-h % MULTIPLE + MULTIPLE) % MULTIPLE;
  const pw = w + (-w % MULTIPLE + MULTIPLE) % MULTIPLE;
  const mode8 = Math.min(h, w) > Math.max(ph - h, pw - w) ? "reflect" : "edge";
  // The ONNX graph takes one fixed tile shape, whereas restore_array shrinks the tile to a padded
  // side smaller than it. Such a side is padded further (reflect, or edge where the padded image
  // is too small to reflect, by the same rule) up to the tile, and cropped back. Only there can
  // the page differ from restore_array by more than rounding: the network sees more border.
  const H = Math.max(ph, T);
  const W = Math.max(pw, T);
  const modeT = Math.min(ph, pw) > Math.max(H - ph, W - pw) ? "reflect" : "edge";
  const rowOf = Int32Array.from({ length: H }, (_, y) => padIndex(padIndex(y, ph, modeT), h, mode8));
  const colOf = Int32Array.from({ length: W }, (_, x) => padIndex(padIndex(x, pw, modeT), w, mode8));

  // restore_array's window: feathered only along an axis with several tiles; float32 product.
  const wy = windowRamp(T, T < H ? overlap : 0);
  const wx = windowRamp(T, T < W ? overlap : 0);
  const win = new Float32Array(T * T);
  for (let ty = 0; ty < T; ty++) for (let tx = 0; tx < T; tx++) win[ty * T + tx] = wy[ty] * wx[tx];

  const origins = [];
  for (const y of starts(H, T, overlap)) for (const x of starts(W, T, overlap)) origins.push([y, x]);

  // Sums over the kept crop only: a pixel's blend depends on its own sums, and the rest is
  // cropped away. Float32Array stores round each sum to float32, as numpy's += does.
  const out = new Float32Array(h * w * 3);
  const weight = new Float32Array(h * w);
  const tileData = new Float32Array(T * T * 3);
  const inputName = session.inputNames[0];
  const outputName = session.outputNames[0];
  onTile(0, origins.length);
  for (let i = 0; i < origins.length; i++) {
    const [y0, x0] = origins[i];
    for (let ty = 0; ty < T; ty++) {
      const row = rowOf[y0 + ty] * w;
      for (let tx = 0; tx < T; tx++) {
        const s = (row + colOf[x0 + tx]) * 3;
        const d = (ty * T + tx) * 3;
        tileData[d] = rgb[s];
        tileData[d + 1] = rgb[s + 1];
        tileData[d + 2] = rgb[s + 2];
      }
    }
    const input = new ort.Tensor("float32", tileData, [1, T, T, 3]);
    const results = await session.run({ [inputName]: input });
    const restored = results[outputName].data;
    const rows = Math.min(T, h - y0);
    const cols = Math.min(T, w - x0);
    for (let ty = 0; ty < rows; ty++) {
      for (let tx = 0; tx < cols; tx++) {
        const k = ty * T + tx;
        const p = (y0 + ty) * w + x0 + tx;
        const c = win[k];
        // out += restored * win: the product is rounded to float32 before the sum, as in numpy.
        out[3 * p] += Math.fround(restored[3 * k] * c);
        out[3 * p + 1] += Math.fround(restored[3 * k + 1] * c);
        out[3 * p + 2] += Math.fround(restored[3 * k + 2] * c);
        weight[p] += c;
      }
    }
    for (const tensor of Object.values(results)) tensor.dispose?.();
    onTile(i + 1, origins.length);
  }

  // clip(out / weight, 0, 1), then images.encode_picture's clip(rint(v * 255), 0, 255) in float32.
  const result = new Uint8ClampedArray(h * w * 4);
  for (let p = 0; p < h * w; p++) {
    for (let c = 0; c < 3; c++) {
      const v = Math.min(Math.max(Math.fround(out[3 * p + c] / weight[p]), 0), 1);
      result[4 * p + c] = Math.min(Math.max(rint(Math.fround(v * 255)), 0), 255);
    }
    result[4 * p + 3] = 255;
  }
  return result;
}

// ---------------------------------------------------------------------------------------------
// A user's file: size check, decoding, restoring, showing, offering the PNG.

function notAnImage(file) {
  return new Error(
    `"${file.name}" is not an image this browser can decode (expected a PNG, JPEG, WebP, GIF, ` +
      "BMP or AVIF file).",
  );
}

function tooLarge(file, width, height) {
  const mp = (width * height) / 1e6;
  return new Error(
    `"${file.name}" is too large: ${width} × ${height} pixels = ${mp.toFixed(1)} megapixels, ` +
      `above this page's limit of ${MAX_MEGAPIXELS} megapixels. Scale it down first, or restore ` +
      "it with `python -m mirl_jax.main --mode restore`.",
  );
}

// The size from the header first (an <img> that is never shown is not decoded), so that a huge
// photo is refused before its pixels take hundreds of megabytes.
function imageSize(file) {
  return new Promise((resolve, reject) => {
    const url = URL.createObjectURL(file);
    const img = new Image();
    img.onload = () => {
      URL.revokeObjectURL(url);
      resolve([img.naturalWidth, img.naturalHeight]);
    };
    img.onerror = () => {
      URL.revokeObjectURL(url);
      reject(notAnImage(file));
    };
    img.src = url;
  });
}

// Upright 8-bit RGBA pixels as Pillow would read them: EXIF orientation applied, no colour
// management (Pillow ignores ICC profiles too), alpha dropped from the result (written opaque).
async function decode(file) {
  const [width, height] = await imageSize(file);
  if (!width || !height) throw notAnImage(file);
  if (width * height > MAX_PIXELS) throw tooLarge(file, width, height);
  let bitmap;
  try {
    bitmap = await createImageBitmap(file, {
      imageOrientation: "from-image",
      premultiplyAlpha: "none",
      colorSpaceConversion: "none",
    });
  } catch {
    throw notAnImage(file);
  }
  if (bitmap.width * bitmap.height > MAX_PIXELS) throw tooLarge(file, bitmap.width, bitmap.height);
  const canvas = document.createElement("canvas");
  canvas.width = bitmap.width;
  canvas.height = bitmap.height;
  const context = canvas.getContext("2d", { willReadFrequently: true });
  context.drawImage(bitmap, 0, 0);
  bitmap.close();
  const pixels = context.getImageData(0, 0, canvas.width, canvas.height).data;
  return { canvas, pixels, width: canvas.width, height: canvas.height };
}

function canvasPng(canvas) {
  return new Promise((resolve, reject) =>
    canvas.toBlob((blob) => (blob ? resolve(blob) : reject(new Error("could not encode the PNG"))), "image/png"),
  );
}

function stemOf(name) {
  const dot = name.lastIndexOf(".");
  return (dot > 0 ? name.slice(0, dot) : name) || "image";
}

async function restoreFile(file) {
  if (!session || busy) return;
  busy = true;
  $("file").disabled = true;
  document.body.dataset.state = "working";
  $("result").hidden = true; // no earlier result offered beside this file's outcome
  clearError();
  setProgress(0, 0);
  try {
    setStatus(`Reading ${file.name}…`);
    const image = await decode(file);
    setStatus(`Restoring ${file.name} (${image.width} × ${image.height})…`);
    const started = performance.now();
    const restored = await restorePixels(image.pixels, image.width, image.height, setProgress);
    const seconds = (performance.now() - started) / 1000;

    const canvas = document.createElement("canvas");
    canvas.width = image.width;
    canvas.height = image.height;
    canvas.getContext("2d").putImageData(new ImageData(restored, image.width, image.height), 0, 0);
    const [before, after] = await Promise.all([canvasPng(image.canvas), canvasPng(canvas)]);
    objectUrls.splice(0).forEach((url) => URL.revokeObjectURL(url));
    const beforeUrl = URL.createObjectURL(before);
    const afterUrl = URL.createObjectURL(after);
    objectUrls.push(beforeUrl, afterUrl);
    await Promise.all([showImage($("before"), beforeUrl), showImage($("after"), afterUrl)]);
    $("download").href = afterUrl;
    $("download").download = `${stemOf(file.name)}_restored.png`;
    $("download").textContent = `Download ${stemOf(file.name)}_restored.png (${formatBytes(after.size)})`;
    $("result").hidden = false;
    setStatus(`Restored ${file.name} (${image.width} × ${image.height}) in ${seconds.toFixed(1)} s.`);
    document.body.dataset.state = "done";
  } catch (error) {
    setStatus("");
    showError(error.message);
    document.body.dataset.state = "error";
  } finally {
    busy = false;
    $("file").disabled = false;
    $("file").value = ""; // the same file picked again fires "change" again
  }
}

function showImage(img, url) {
  return new Promise((resolve) => {
    img.onload = img.onerror = () => resolve();
    img.src = url;
  });
}

// ---------------------------------------------------------------------------------------------
// Wiring.

function wire() {
  $("limit").textContent = `${MAX_MEGAPIXELS}`;
  $("file").addEventListener("change", () => {
    const file = $("file").files[0];
    if (file) restoreFile(file);
  });
  const drop = $("drop");
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
  }
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    const file = event.dataTransfer?.files?.[0];
    if (file) restoreFile(file);
    else showError("Drop a file (an image), not text or a link.");
  });
  drop.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      $("file").click();
    }
  });
  // A file dropped beside the zone would otherwise make the browser leave the page to show it.
  for (const type of ["dragover", "drop"]) window.addEventListener(type, (event) => event.preventDefault());
  $("slider").addEventListener("input", () => {
    $("compare").style.setProperty("--split", `${$("slider").value}%`);
  });
}

wire();
loadModel().then(
  () => {
    document.body.dataset.model = "ready";
    $("file").disabled = false;
  },
  (error) => {
    document.body.dataset.model = "failed";
    $("model-status").textContent = "The model could not be loaded.";
    showError(`Could not load the model: ${error.message}`);
  },
);
