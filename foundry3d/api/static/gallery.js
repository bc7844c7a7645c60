// foundry3d gallery: three pages over the JSON API. DOM built with textContent (no HTML
// injection from prompts); the token lives in localStorage and goes in the Authorization
// header, or in ?access_token= for <img> and <model-viewer>, which cannot send headers.
"use strict";

const tokenInput = () => document.getElementById("token");
const token = () => localStorage.getItem("foundry3d-token") || "";
const $ = (id) => document.getElementById(id);

function withToken(url) {
  if (!url || !token()) return url;
  return url + (url.includes("?") ? "&" : "?") + "access_token=" + encodeURIComponent(token());
}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (token()) headers.Authorization = "Bearer " + token();
  const response = await fetch(path, Object.assign({}, options, { headers }));
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = (body && body.error) || {};
    throw new Error(`${response.status} ${error.code || ""}: ${error.message || response.statusText}`);
  }
  return body;
}

function el(tag, text, attrs = {}) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  return node;
}

function say(message, isError = false) {
  const status = $("status");
  status.textContent = message;
  status.className = isError ? "error" : "";
}

function fmt(value) {
  return typeof value === "number" ? (Number.isInteger(value) ? value : value.toFixed(3)) : value;
}

// --- index: search grid ----------------------------------------------------------------------

let nextCursor = null;
let searchNumber = 0;  // a newer search wins over a slower older one

function card(item) {
  const li = el("li", null, { class: "card", "data-asset": item.asset_id });
  const link = el("a", null, { href: "/assets/" + item.asset_id });
  if (item.thumbnail_url) {
    link.append(el("img", null, { src: withToken(item.thumbnail_url), alt: "preview of " + (item.prompt || item.asset_id), loading: "lazy" }));
  } else {
    link.append(el("div", "no preview yet", { class: "noimg" }));
  }
  const body = el("div", null, { class: "body" });
  body.append(el("p", item.prompt || item.kind + " asset"));
  body.append(el("p", item.state + (item.stage && item.state !== "succeeded" ? " (" + item.stage + ")" : ""),
                 { class: "state state-" + item.state }));
  const metrics = Object.entries(item.metrics || {}).map(([k, v]) => k + " " + fmt(v)).join(" · ");
  if (metrics) body.append(el("p", metrics, { class: "metrics" }));
  link.append(body);
  li.append(link);
  return li;
}

async function search(append = false) {
  const params = new URLSearchParams();
  for (const name of ["q", "tag", "state", "batch"]) {
    const value = $(name).value.trim();
    if (value) params.set(name, value);
  }
  params.set("limit", "24");
  if (append && nextCursor) params.set("cursor", nextCursor);
  say("Searching…");
  const mine = ++searchNumber;
  try {
    const page = await api("/v1/assets?" + params.toString());
    if (mine !== searchNumber) return;
    if (!append) $("results").replaceChildren();
    $("results").dataset.query = params.get("q") || "";
    page.items.forEach((item) => $("results").append(card(item)));
    nextCursor = page.next_cursor;
    $("more").hidden = !nextCursor;
    say(page.items.length ? `${$("results").children.length} asset(s)` : "No assets match.");
  } catch (error) {
    say(error.message, true);
  }
}

// --- asset page ------------------------------------------------------------------------------

function showViewer(asset) {
  const holder = $("viewer");
  const glb = asset.files.find((f) => f.name === "asset.glb");
  const preview = asset.files.find((f) => f.name === "thumbnail.png") || asset.files.find((f) => f.name === "preview.png");
  holder.replaceChildren();
  const viewerReady = !window.viewerMissing && window.customElements && customElements.get("model-viewer");
  if (glb && viewerReady) {
    const viewer = el("model-viewer", null, { src: withToken(glb.url), "camera-controls": "", "auto-rotate": "",
      alt: "3D model of " + (asset.request.prompt || asset.asset_id), id: "model" });
    viewer.addEventListener("load", () => viewer.setAttribute("data-loaded", "true"));
    holder.append(viewer);
    return;
  }
  if (preview) holder.append(el("img", null, { src: withToken(preview.url), alt: "preview sheet", class: "bundle" }));
  const why = !glb ? "This asset has no GLB yet." :
    "The interactive 3D viewer is unavailable: @google/model-viewer is not installed on the server (run scripts/install.sh with npm present). Showing the static preview.";
  holder.append(el("p", why, { class: "notice", id: "viewer-notice" }));
}

async function loadAsset() {
  const id = decodeURIComponent(location.pathname.split("/").pop());
  try {
    const asset = await api("/v1/assets/" + encodeURIComponent(id));
    document.title = "foundry3d: " + (asset.request.prompt || id);
    $("title").textContent = asset.request.prompt || id;
    const error = asset.error ? ` — ${asset.error.class}: ${asset.error.message}` : "";
    $("summary").textContent = `${asset.state}${error} · seed ${asset.request.seed} · ${asset.request.generator} · id ${asset.asset_id}`;
    showViewer(asset);
    const bundle = asset.files.find((f) => f.name === "bundle.png");
    $("bundle").replaceChildren(bundle ? el("img", null, { src: withToken(bundle.url), alt: "bundle image: 4 views over 4 normal maps", class: "bundle" })
                                       : el("p", "no bundle image yet"));
    const stages = $("stages").querySelector("tbody");
    stages.replaceChildren();
    for (const run of asset.stages) {
      const row = el("tr");
      [run.stage, run.attempt, run.status, run.duration_s == null ? "" : run.duration_s.toFixed(2),
       run.error_class ? run.error_class + ": " + run.error_message : ""].forEach((v) => row.append(el("td", v)));
      stages.append(row);
    }
    const metrics = $("metrics").querySelector("tbody");
    metrics.replaceChildren();
    for (const [name, value] of Object.entries(asset.metrics)) {
      const row = el("tr");
      row.append(el("th", name, { scope: "row" }), el("td", fmt(value)));
      metrics.append(row);
    }
    $("files").replaceChildren(...asset.files.map((f) => {
      const li = el("li");
      li.append(el("a", f.name, { href: withToken(f.url), download: f.name }));
      return li;
    }));
    const retry = $("retry");
    retry.hidden = asset.state !== "failed" && asset.state !== "needs_review";
    retry.onclick = () => retryAsset(asset.asset_id, loadAsset);
  } catch (error) {
    say(error.message, true);
  }
}

async function retryAsset(id, then) {
  try {
    await api("/v1/assets/" + encodeURIComponent(id) + "/retry", { method: "POST" });
    say("Retry queued for " + id);
    if (then) then();
  } catch (error) {
    say("Retry refused: " + error.message, true);
  }
}

// --- batch page ------------------------------------------------------------------------------

async function loadBatch() {
  const id = decodeURIComponent(location.pathname.split("/").pop());
  try {
    const job = await api("/v1/jobs/" + encodeURIComponent(id));
    $("title").textContent = "Batch " + id;
    const counts = Object.entries(job.counts).map(([k, v]) => `${v} ${k}`).join(", ");
    const place = job.queue_position == null ? "" : ` · next in queue at place ${job.queue_position + 1}`;
    $("summary").textContent = `${job.state}: ${counts}${place}`;
    const body = $("assets").querySelector("tbody");
    body.replaceChildren();
    for (const asset of job.assets) {
      const row = el("tr", null, { "data-asset": asset.asset_id, "data-state": asset.state });
      const link = el("a", asset.asset_id.slice(0, 12), { href: "/assets/" + asset.asset_id });
      const idCell = el("td");
      idCell.append(link);
      const bar = el("progress", asset.progress + "%", { max: "100", value: String(asset.progress),
        "aria-label": "progress of " + asset.asset_id.slice(0, 12) });
      const barCell = el("td");
      barCell.append(bar, el("span", " " + asset.progress + "%"));
      const actions = el("td");
      if (asset.state === "failed" || asset.state === "needs_review") {
        const button = el("button", "Retry", { type: "button", class: "retry" });
        button.onclick = () => retryAsset(asset.asset_id, loadBatch);
        actions.append(button);
      }
      row.append(idCell, el("td", asset.prompt || ""), el("td", asset.state, { class: "state state-" + asset.state }),
                 el("td", asset.stage || ""), barCell,
                 el("td", asset.error ? asset.error.class + ": " + asset.error.message : ""), actions);
      body.append(row);
    }
    $("rejected-section").hidden = !job.rejected.length;
    $("rejected").replaceChildren(...job.rejected.map((r) => el("li", `line ${r.line}: ${r.reason}`)));
    if (job.state === "queued" || job.state === "running") setTimeout(loadBatch, 1500);
  } catch (error) {
    say(error.message, true);
  }
}

// --- start -----------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  const input = tokenInput();
  input.value = token();
  input.addEventListener("change", () => localStorage.setItem("foundry3d-token", input.value.trim()));
  const page = document.body.dataset.page;
  if (page === "index") {
    $("search").addEventListener("submit", (event) => { event.preventDefault(); search(false); });
    $("more").addEventListener("click", () => search(true));
    const params = new URLSearchParams(location.search);
    for (const name of ["q", "tag", "state", "batch"]) if (params.get(name)) $(name).value = params.get(name);
    search(false);
  } else if (page === "asset") {
    // The module script may still be loading: wait for the element to be defined, briefly.
    const ready = window.customElements ? Promise.race([customElements.whenDefined("model-viewer"),
      new Promise((resolve) => setTimeout(resolve, 3000))]) : Promise.resolve();
    ready.then(loadAsset);
  } else if (page === "batch") {
    loadBatch();
  }
});
