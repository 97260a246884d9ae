// air serve: the page. Plain JavaScript, no build step, no external assets. Every number shown comes from the
// server (the model's own code); this file only draws pixels, sends requests and shows the answers.
"use strict";

// One colour per inference step, the same as visualise.DEFAULT_COLOURS (step 1 red, step 2 green, ...).
const COLOURS = ["#e6194b", "#3cb44b", "#0082c8", "#ffe119", "#f58230", "#911eb4", "#46f0f0", "#f032e6"];
const $ = (id) => document.getElementById(id);

// State the page shows, readable by tests (window.air): what was sent and what came back.
const air = (window.air = {
  info: null,
  pending: 0,          // requests in flight
  displayed: null,     // Decompose: {pixels (0..255 list actually sent), result}
  transform: null,     // Transform explorer: {request, result}
  generated: null,     // Generate: the last answer
  idle: () => air.pending === 0 && !decompose.dirty && !explorer.dirty && !decompose.stroke,
});

// ------------------------------------------------------------------------------------------------ helpers
async function api(path, options = {}) {
  air.pending++;
  try {
    const response = await fetch(path, options);
    let data;
    try {
      data = await response.json();
    } catch (e) {
      data = { error: `the server answered ${response.status} ${response.statusText} without JSON` };
    }
    if (!response.ok) throw new Error(data.error || `HTTP ${response.status}`);
    return data;
  } finally {
    air.pending--;
  }
}

const postJSON = (path, body) =>
  api(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });

function showError(id, error) {
  const el = $(id);
  if (error) {
    el.textContent = String(error.message || error);
    el.hidden = false;
  } else {
    el.textContent = "";
    el.hidden = true;
  }
}

// Draw a grey image (a flat list of 0..255 values) on a canvas, shown `zoom` times enlarged.
function paint(canvas, values, width, height, zoom) {
  canvas.width = width;
  canvas.height = height;
  canvas.style.width = `${width * zoom}px`;
  canvas.style.height = `${height * zoom}px`;
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(width, height);
  for (let i = 0; i < width * height; i++) {
    const v = values[i];
    img.data[4 * i] = v;
    img.data[4 * i + 1] = v;
    img.data[4 * i + 2] = v;
    img.data[4 * i + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
}

// Boxes (x_min, y_min, x_max, y_max in image pixels) as coloured frames over a stage, `zoom` CSS px per pixel.
function drawBoxes(stage, boxes, zoom) {
  stage.querySelectorAll(".box").forEach((b) => b.remove());
  for (const { step, box } of boxes) {
    const div = document.createElement("div");
    div.className = `box step-${step}`;
    div.dataset.step = step;
    div.dataset.box = box.join(",");
    const colour = COLOURS[(step - 1) % COLOURS.length];
    Object.assign(div.style, {
      left: `${box[0] * zoom}px`, top: `${box[1] * zoom}px`,
      width: `${(box[2] - box[0]) * zoom}px`, height: `${(box[3] - box[1]) * zoom}px`, borderColor: colour,
    });
    const label = document.createElement("span");
    label.textContent = step;
    label.style.background = colour;
    div.appendChild(label);
    stage.appendChild(div);
  }
}

function figure(caption, values, size, zoom) {
  const fig = document.createElement("figure");
  const canvas = document.createElement("canvas");
  canvas.className = "px";
  paint(canvas, values, size, size, zoom);
  const cap = document.createElement("figcaption");
  cap.textContent = caption;
  fig.append(canvas, cap);
  return fig;
}

// A request pattern for things that change continuously (strokes, sliders): at most one request in flight;
// changes made meanwhile are sent once it returns (only the latest state), and stale answers are dropped.
function latest(send, show, errorId) {
  const state = { busy: false, dirty: false, seq: 0 };
  state.request = async function request() {
    if (state.busy) {
      state.dirty = true;
      return;
    }
    state.busy = true;
    state.dirty = false;
    const seq = ++state.seq;
    try {
      const { sent, result } = await send();
      if (seq === state.seq) {
        show(sent, result);
        showError(errorId, null);
      }
    } catch (e) {
      showError(errorId, e);
    } finally {
      state.busy = false;
      if (state.dirty) state.request();
    }
  };
  return state;
}

// ---------------------------------------------------------------------------------------------- Decompose
const ZOOM = 8;          // input canvas: CSS pixels per image pixel
const RECON_ZOOM = 5;
let S = 50;              // image size, from /api/info
let pix = new Float32Array(S * S);   // the drawing, values in [0, 1]

const pixelsU8 = () => Array.from(pix, (v) => Math.round(Math.min(1, Math.max(0, v)) * 255));

function setPixels(values) {
  pix = Float32Array.from(values, (v) => v / 255);
  redraw();
}

function redraw() {
  paint($("draw"), pixelsU8(), S, S, ZOOM);
}

const decompose = latest(
  async () => {
    const sent = pixelsU8();
    return { sent, result: await postJSON("/api/infer", { pixels: sent }) };
  },
  showDecomposition,
  "decompose-error",
);
decompose.stroke = false;

function showDecomposition(sent, r) {
  air.displayed = { pixels: sent, result: r };
  $("count").textContent = r.count;
  $("pres-probs").textContent = r.steps.map((s) => s.presence_prob.toFixed(2)).join(", ");
  const present = r.steps.filter((s) => s.present);
  drawBoxes($("draw-stage"), present, ZOOM);
  paint($("recon"), r.reconstruction, S, S, RECON_ZOOM);
  drawBoxes($("recon-stage"), present, RECON_ZOOM);
  const list = $("steps");
  list.replaceChildren();
  const W = air.info.window_size;
  for (const s of r.steps) {
    const row = document.createElement("div");
    row.className = `step ${s.present ? "present" : "absent"}`;
    row.style.borderLeftColor = COLOURS[(s.step - 1) % COLOURS.length];
    const label = document.createElement("div");
    label.className = "label";
    label.innerHTML = `<b>step ${s.step}</b><br>p = ${s.presence_prob.toFixed(3)}<br>` +
      (s.present ? `${(s.box[2] - s.box[0]).toFixed(1)} px window` : "no object: stop");
    row.appendChild(label);
    if (s.present) {
      row.appendChild(figure("crop (what it saw)", s.crop, W, 3));
      row.appendChild(figure("reconstruction", s.window, W, 3));
    }
    list.appendChild(row);
  }
}

// Mouse / pen / touch drawing: an anti-aliased round brush stamped along the stroke, in image pixels.
function stamp(cx, cy) {
  const r = parseFloat($("brush").value);
  const erase = $("erase").checked;
  for (let y = Math.max(0, Math.floor(cy - r - 1)); y <= Math.min(S - 1, Math.ceil(cy + r + 1)); y++) {
    for (let x = Math.max(0, Math.floor(cx - r - 1)); x <= Math.min(S - 1, Math.ceil(cx + r + 1)); x++) {
      const d = Math.hypot(x + 0.5 - cx, y + 0.5 - cy);
      const v = Math.min(1, Math.max(0, r + 0.5 - d));
      const i = y * S + x;
      pix[i] = erase ? Math.min(pix[i], 1 - v) : Math.max(pix[i], v);
    }
  }
}

let last = null;
function pointerPos(ev) {
  const rect = $("draw").getBoundingClientRect();
  return [((ev.clientX - rect.left) / rect.width) * S, ((ev.clientY - rect.top) / rect.height) * S];
}

function strokeTo(p) {
  const [x0, y0] = last || p;
  const n = Math.max(1, Math.ceil(Math.hypot(p[0] - x0, p[1] - y0) / 0.3));
  for (let k = 1; k <= n; k++) stamp(x0 + ((p[0] - x0) * k) / n, y0 + ((p[1] - y0) * k) / n);
  last = p;
  redraw();
  decompose.request();   // update while drawing
}

function setUpDrawing() {
  const c = $("draw");
  c.addEventListener("pointerdown", (ev) => {
    c.setPointerCapture(ev.pointerId);
    decompose.stroke = true;
    last = null;
    strokeTo(pointerPos(ev));
  });
  c.addEventListener("pointermove", (ev) => {
    if (decompose.stroke) strokeTo(pointerPos(ev));
  });
  const end = () => {
    if (!decompose.stroke) return;
    decompose.stroke = false;
    last = null;
    decompose.request();
  };
  c.addEventListener("pointerup", end);
  c.addEventListener("pointercancel", end);
  $("clear").addEventListener("click", () => {
    pix.fill(0);
    $("input-note").textContent = "";
    redraw();
    decompose.request();
  });
  $("random-scene").addEventListener("click", async () => {
    try {
      const s = await api("/api/scene");
      setPixels(s.pixels);
      $("input-note").textContent = `held-out scene #${s.index} (${s.source}): true count ${s.true_count}`;
      decompose.request();
      showError("decompose-error", null);
    } catch (e) {
      showError("decompose-error", e);
    }
  });
  $("upload").addEventListener("change", async (ev) => {
    const file = ev.target.files[0];
    ev.target.value = "";   // the same file can be chosen again
    if (!file) return;
    const limit = air.info.limits.body_bytes;
    if (file.size > limit) {   // the server refuses it too; this says so before sending megabytes
      showError("decompose-error", `${file.name}: the file is ${(file.size / 1e6).toFixed(1)} MB; ` +
        `the limit is ${(limit / 1e6).toFixed(0)} MB`);
      return;
    }
    try {
      const r = await api(`/api/upload?invert=${$("invert").value}`, {
        method: "POST",
        headers: { "Content-Type": file.type || "application/octet-stream", "X-Filename": encodeURIComponent(file.name) },
        body: file,
      });
      decompose.seq++;   // drop any drawing answer still on its way
      setPixels(r.pixels);
      showDecomposition(r.pixels, r);
      const src = r.source;
      $("input-note").textContent = `${src.name}: ${src.width}x${src.height} px` +
        (src.inverted ? ", inverted (dark on light)" : "") + `, resized to ${S}x${S}`;
      showError("decompose-error", null);
    } catch (e) {
      showError("decompose-error", e);
    }
  });
}

// ------------------------------------------------------------------------------------- Transform explorer
const T_ZOOM = 6;
const CROP_ZOOM = 8;
let tpix = null;   // the explorer's scene, 0..255 list

const explorer = latest(
  async () => {
    const request = { pixels: tpix, scale: +$("t-scale").value, x: +$("t-x").value, y: +$("t-y").value };
    return { sent: request, result: await postJSON("/api/transform", request) };
  },
  showTransform,
  "transform-error",
);

function showTransform(request, r) {
  air.transform = { request, result: r };
  const W = air.info.window_size;
  paint($("t-scene"), r.pixels, S, S, T_ZOOM);
  drawBoxes($("t-scene-stage"), [{ step: 1, box: r.box }], T_ZOOM);
  paint($("t-crop"), r.crop, W, W, CROP_ZOOM);
  paint($("t-placed"), r.placed, S, S, T_ZOOM);
  drawBoxes($("t-placed-stage"), [{ step: 1, box: r.box }], T_ZOOM);
  const [s, x, y] = r.z_where;
  $("t-window-size").textContent = `window: ${r.window_pixels.toFixed(1)} x ${r.window_pixels.toFixed(1)} px ` +
    `centred at (${(((x + 1) * S) / 2).toFixed(1)}, ${(((y + 1) * S) / 2).toFixed(1)}) px`;
  const c = r.crop_theta, p = r.place_theta, f = (v) => v.toFixed(3).padStart(7);
  $("t-theta").textContent =
    `crop  (window -> image):  [${f(c[0])} ${f(c[1])} ${f(c[2])}]\n` +
    `                          [${f(c[3])} ${f(c[4])} ${f(c[5])}]\n` +
    `place (image -> window):  [${f(p[0])} ${f(p[1])} ${f(p[2])}]\n` +
    `                          [${f(p[3])} ${f(p[4])} ${f(p[5])}]`;
  void s;
}

function sliderOutputs() {
  for (const id of ["t-scale", "t-x", "t-y"]) $(`${id}-out`).textContent = (+$(id).value).toFixed(2);
}

function snapButtons() {
  const box = $("t-snap");
  box.replaceChildren();
  const d = air.displayed;
  if (!d || !tpix || d.pixels.join() !== tpix.join()) return;
  d.result.z_where.forEach((w, k) => {
    const b = document.createElement("button");
    b.textContent = `step ${k + 1}'s window`;
    b.style.borderColor = COLOURS[k % COLOURS.length];
    b.addEventListener("click", () => {
      $("t-scale").value = w[0];
      $("t-x").value = w[1];
      $("t-y").value = w[2];
      sliderOutputs();
      explorer.request();
    });
    box.appendChild(b);
  });
}

function setUpExplorer() {
  $("t-scale").value = (S / air.info.window_size).toFixed(2);   // 1:1, a window_size-pixel window
  for (const id of ["t-scale", "t-x", "t-y"]) {
    $(id).addEventListener("input", () => {
      sliderOutputs();
      explorer.request();
    });
  }
  sliderOutputs();
  $("t-use-drawing").addEventListener("click", () => {
    tpix = air.displayed ? air.displayed.pixels : pixelsU8();
    snapButtons();
    explorer.request();
  });
  $("t-random").addEventListener("click", async () => {
    try {
      tpix = (await api("/api/scene")).pixels;
      snapButtons();
      explorer.request();
    } catch (e) {
      showError("transform-error", e);
    }
  });
}

// -------------------------------------------------------------------------------------------- Generate
const G_ZOOM = 3;
let gSeed = null;
let gSeq = 0;   // answers to older requests (the slider moved on) are dropped

async function sample(newSeed) {
  const seq = ++gSeq;
  const prior = $("g-prior").checked;
  $("g-objects").disabled = prior;
  $("g-objects-out").textContent = prior ? "prior" : $("g-objects").value;
  const n = Math.max(1, Math.min(32, parseInt($("g-n").value, 10) || 8));
  const request = { n, objects: prior ? null : +$("g-objects").value, seed: newSeed ? null : gSeed };
  try {
    const r = await postJSON("/api/generate", request);
    if (seq !== gSeq) return;
    gSeed = r.seed;
    air.generated = r;
    $("g-seed").textContent = `seed ${r.seed}`;
    const grid = $("g-grid");
    grid.replaceChildren();
    for (const s of r.scenes) {
      const fig = document.createElement("figure");
      const stage = document.createElement("div");
      stage.className = "stage";
      const canvas = document.createElement("canvas");
      canvas.className = "px";
      paint(canvas, s.pixels, S, S, G_ZOOM);
      stage.appendChild(canvas);
      drawBoxes(stage, s.boxes, G_ZOOM);
      const cap = document.createElement("figcaption");
      const inView = s.boxes.filter(({ box }) => box[0] < S && box[2] > 0 && box[1] < S && box[3] > 0).length;
      cap.textContent = `${s.count} object${s.count === 1 ? "" : "s"}` +
        (inView < s.count ? `, ${inView} in view` : "");
      fig.append(stage, cap);
      grid.appendChild(fig);
    }
    showError("generate-error", null);
  } catch (e) {
    if (seq === gSeq) showError("generate-error", e);
  }
}

function setUpGenerate() {
  $("g-objects").max = air.info.max_steps;
  $("g-shift-prior").textContent = `${air.info.shift_prior[0]}, ${air.info.shift_prior[1]}`;
  $("g-objects").addEventListener("input", () => sample(false));
  $("g-prior").addEventListener("change", () => sample(false));
  $("g-n").addEventListener("change", () => sample(false));
  $("g-new").addEventListener("click", () => sample(true));
}

// ------------------------------------------------------------------------------------------------- tabs
function selectTab(name) {
  for (const t of ["decompose", "transform", "generate"]) {
    $(`tab-${t}`).setAttribute("aria-selected", String(t === name));
    $(t).hidden = t !== name;
  }
  if (name === "transform") {
    if (!tpix) tpix = air.displayed ? air.displayed.pixels : pixelsU8();
    snapButtons();
    explorer.request();
  } else if (name === "generate" && !air.generated) {
    sample(true);
  }
}

async function main() {
  try {
    air.info = await api("/api/info");
  } catch (e) {
    $("model-info").textContent = `cannot reach the model: ${e.message}`;
    return;
  }
  const info = air.info;
  S = info.image_size;
  pix = new Float32Array(S * S);
  $("model-info").textContent = `${info.name}: ${S}x${S} images, up to ${info.max_steps} objects, ` +
    `${info.window_size}x${info.window_size} windows${info.dair ? ", DAIR" : ""}`;
  $("canvas-size").textContent = `${S}x${S}, shown ${ZOOM}x`;
  document.querySelectorAll(".max-steps").forEach((e) => (e.textContent = info.max_steps));
  document.querySelectorAll(".image-size").forEach((e) => (e.textContent = S));
  $("t-crop-size").textContent = `${info.window_size}x${info.window_size}`;
  for (const t of ["decompose", "transform", "generate"]) $(`tab-${t}`).addEventListener("click", () => selectTab(t));
  redraw();
  setUpDrawing();
  setUpExplorer();
  setUpGenerate();
  decompose.request();
  document.body.dataset.ready = "1";
}

main();
