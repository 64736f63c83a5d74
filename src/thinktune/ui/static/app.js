// thinktune ui: plain JavaScript written for thinktune. No framework, no request to any other host; charts are
// SVG drawn here. The page reads run folders through the API and starts `thinktune ...` jobs; it holds nothing
// a job needs, so closing or reloading it changes nothing for a running job.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));
const SVG = "http://www.w3.org/2000/svg";

// ------------------------------------------------------------------------------------------ i18n

const I18N = { lang: "en", messages: {}, fallback: {} };

function t(key, vars) {
  let s = I18N.messages[key] ?? I18N.fallback[key] ?? key;
  if (vars) for (const [k, v] of Object.entries(vars)) s = s.split(`{${k}}`).join(String(v));
  return s;
}

async function loadMessages(lang) {
  const get = async (l) => (await fetch(`/static/messages.${l}.json`)).json();
  if (!Object.keys(I18N.fallback).length) I18N.fallback = await get("en");
  I18N.messages = lang === "en" ? I18N.fallback : await get(lang);
  I18N.lang = lang;
  document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
  $$("[data-i18n]").forEach((el) => { el.textContent = t(el.dataset.i18n); });
  $$("[data-i18n-title]").forEach((el) => { el.title = t(el.dataset.i18nTitle); });
  $$("[data-i18n-placeholder]").forEach((el) => { el.placeholder = t(el.dataset.i18nPlaceholder); });
  $("#lang").value = lang;
  applyTheme(localStorage.getItem("thinktune.theme") || "auto");
}

function initialLang() {
  const saved = localStorage.getItem("thinktune.lang");
  if (saved === "en" || saved === "zh") return saved;
  return (navigator.language || "en").toLowerCase().startsWith("zh") ? "zh" : "en";
}

// ------------------------------------------------------------------------------------------ theme

function applyTheme(mode) {
  if (mode === "light" || mode === "dark") document.documentElement.dataset.theme = mode;
  else delete document.documentElement.dataset.theme;
  $("#theme").textContent = t(`ui.theme_${mode}`);
  $("#theme").dataset.mode = mode;
}

// ------------------------------------------------------------------------------------------ helpers

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c));
  return e;
}

function svgEl(tag, attrs = {}) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
}

async function api(path, body) {
  const opts = body === undefined ? {} : { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  const r = await fetch(path, opts);
  let data = null;
  try { data = await r.json(); } catch (e) { data = { error: `${r.status} ${r.statusText}` }; }
  if (!r.ok) { const err = new Error(data.error || r.statusText); err.data = data; err.status = r.status; throw err; }
  return data;
}

function flash(message, isError = false) {
  const f = $("#flash");
  f.textContent = message;
  f.classList.toggle("error", isError);
  f.classList.remove("hidden");
  clearTimeout(flash.timer);
  flash.timer = setTimeout(() => f.classList.add("hidden"), isError ? 20000 : 6000);
}

const fmt = {
  num(v, digits = 4) { return v === null || v === undefined ? t("ui.none") : Number(v).toFixed(digits); },
  pct(v) { return v === null || v === undefined ? t("ui.none") : `${(100 * v).toFixed(1)}%`; },
  int(v) { return v === null || v === undefined ? t("ui.none") : String(Math.round(v)); },
  dur(s) {
    if (s === null || s === undefined || !isFinite(s)) return t("ui.none");
    s = Math.max(0, Math.round(s));
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
    return h ? `${h}h ${m}m` : m ? `${m}m ${sec}s` : `${sec}s`;
  },
  when(ts) { return ts ? new Date(ts * 1000).toLocaleString() : t("ui.none"); },
  lr(v) { return v === null || v === undefined ? t("ui.none") : Number(v).toExponential(2); },
};

// a long local path as its last two parts (the whole path is the cell's title)
function shortPath(p) {
  if (!p) return t("ui.none");
  const parts = p.split("/").filter(Boolean);
  return p.startsWith("/") && parts.length > 2 ? `…/${parts.slice(-2).join("/")}` : p;
}

function badge(status) {
  const s = status || "unknown";
  return el("span", { class: `badge ${s}`, text: t(`status.${s}`) });
}

// ------------------------------------------------------------------------------------------ charts (SVG)

function niceTicks(lo, hi, n = 5) {
  if (!isFinite(lo) || !isFinite(hi)) return [];
  if (hi === lo) { hi = lo + 1; }
  const span = hi - lo, step0 = span / n, mag = Math.pow(10, Math.floor(Math.log10(step0)));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => span / s <= n) || mag * 10;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-12; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

function ema(points, weight = 0.6) {
  let s = 0, n = 0;
  return points.map(([x, y]) => { n += 1; s = weight * s + (1 - weight) * y; return [x, s / (1 - Math.pow(weight, n))]; });
}

// series: [{points: [[x, y]], cls, dots?}]; draws into an <svg viewBox="0 0 W H">
function drawChart(svg, series, { log = false, xLabel = "", yFormat = (v) => v.toPrecision(3), empty = "" } = {}) {
  svg.replaceChildren();
  const [, , W, H] = svg.getAttribute("viewBox").split(" ").map(Number);
  const m = { l: 58, r: 14, t: 10, b: 30 };
  const all = series.flatMap((s) => s.points).filter(([, y]) => y !== null && isFinite(y) && (!log || y > 0));
  if (!all.length) {
    const txt = svgEl("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" });
    txt.textContent = empty || t("live.no_points");
    svg.append(txt);
    return;
  }
  const ty = (y) => (log ? Math.log10(y) : y);
  let x0 = Math.min(...all.map((p) => p[0])), x1 = Math.max(...all.map((p) => p[0]));
  let y0 = Math.min(...all.map((p) => ty(p[1]))), y1 = Math.max(...all.map((p) => ty(p[1])));
  if (x1 === x0) x1 = x0 + 1;
  if (y1 === y0) { y0 -= 0.5; y1 += 0.5; }
  const pad = (y1 - y0) * 0.06; y0 -= pad; y1 += pad;
  const X = (x) => m.l + ((x - x0) / (x1 - x0)) * (W - m.l - m.r);
  const Y = (y) => H - m.b - ((ty(y) - y0) / (y1 - y0)) * (H - m.t - m.b);
  const yt = log ? niceTicks(y0, y1, 4).map((v) => Math.pow(10, v)) : niceTicks(y0, y1, 5);
  for (const v of yt) {
    const y = Y(v);
    if (y < m.t - 1 || y > H - m.b + 1) continue;
    svg.append(svgEl("line", { x1: m.l, x2: W - m.r, y1: y, y2: y, class: "grid-line" }));
    const label = svgEl("text", { x: m.l - 6, y: y + 4, "text-anchor": "end" });
    label.textContent = yFormat(v);
    svg.append(label);
  }
  for (const v of niceTicks(x0, x1, 8)) {
    if (Math.abs(v - Math.round(v)) > 1e-9 && x1 - x0 > 4) continue;
    const x = X(v);
    svg.append(svgEl("line", { x1: x, x2: x, y1: H - m.b, y2: H - m.b + 4, class: "axis" }));
    const label = svgEl("text", { x, y: H - m.b + 16, "text-anchor": "middle" });
    label.textContent = String(v);
    svg.append(label);
  }
  svg.append(svgEl("line", { x1: m.l, x2: W - m.r, y1: H - m.b, y2: H - m.b, class: "axis" }));
  if (xLabel) {
    const label = svgEl("text", { x: W - m.r, y: H - 4, "text-anchor": "end" });
    label.textContent = xLabel;
    svg.append(label);
  }
  for (const s of series) {
    const pts = s.points.filter(([, y]) => y !== null && isFinite(y) && (!log || y > 0));
    if (!pts.length) continue;
    if (pts.length > 1 || !s.dots) {
      const d = pts.map(([x, y], i) => `${i ? "L" : "M"}${X(x).toFixed(1)},${Y(y).toFixed(1)}`).join(" ");
      svg.append(svgEl("path", { d, class: s.cls }));
    }
    if (s.dots) for (const [x, y] of pts) svg.append(svgEl("circle", { cx: X(x), cy: Y(y), r: 3.2, class: s.dots }));
  }
}

function barChart(svg, hist, limit) {
  svg.replaceChildren();
  const [, , W, H] = svg.getAttribute("viewBox").split(" ").map(Number);
  const m = { l: 34, r: 8, t: 8, b: 24 };
  const counts = hist.counts || [], edges = hist.edges || [];
  if (!counts.length) return;
  const maxC = Math.max(...counts), lo = edges[0], hi = Math.max(edges[edges.length - 1], limit + 1);
  const X = (v) => m.l + ((v - lo) / (hi - lo)) * (W - m.l - m.r);
  const Y = (c) => H - m.b - (c / maxC) * (H - m.t - m.b);
  counts.forEach((c, i) => {
    const x = X(edges[i]), w = Math.max(1, X(edges[i + 1]) - x - 1);
    svg.append(svgEl("rect", { x, y: Y(c), width: w, height: H - m.b - Y(c), class: edges[i + 1] > limit ? "bar over" : "bar" }));
  });
  svg.append(svgEl("line", { x1: X(limit), x2: X(limit), y1: m.t, y2: H - m.b, class: "limit" }));
  for (const v of niceTicks(lo, hi, 6)) {
    const label = svgEl("text", { x: X(v), y: H - 6, "text-anchor": "middle" });
    label.textContent = String(v);
    svg.append(label);
  }
  const top = svgEl("text", { x: m.l - 4, y: m.t + 8, "text-anchor": "end" });
  top.textContent = String(maxC);
  svg.append(top);
  const lim = svgEl("text", { x: X(limit) - 4, y: m.t + 10, "text-anchor": "end" });
  lim.textContent = `max_length ${limit}`;
  svg.append(lim);
}

// ------------------------------------------------------------------------------------------ state and routing

const state = { runs: [], sort: { key: "modified", dir: -1 }, selected: new Set(), schema: null, info: null };

function route() {
  const [, view = "runs", ...rest] = (location.hash || "#/runs").split("/");
  const arg = decodeURIComponent(rest.join("/") || "");
  $$(".view").forEach((v) => v.classList.add("hidden"));
  const target = $(`#view-${view}`) ? view : "runs";
  $(`#view-${target}`).classList.remove("hidden");
  $$("#nav a").forEach((a) => a.classList.toggle("active", a.dataset.view === target));
  if (target !== "live") Live.close();
  if (target === "runs") Runs.load();
  if (target === "live") Live.open(arg);
  if (target === "new") NewRun.open(arg);
  if (target === "results") Results.open(arg);
  if (target === "chat") Chat.open(arg);
  if (target === "export") Export.open(arg);
}

function currentRunArg() {
  const [, , ...rest] = (location.hash || "").split("/");
  const a = decodeURIComponent(rest.join("/") || "");
  return a.startsWith("job:") ? "" : a;
}

async function fillRunPicker(select, chosen, onChange, { adapterOnly = false } = {}) {
  const data = await api("/api/runs");
  state.runs = data.runs;
  const names = data.runs.filter((r) => !adapterOnly || r.has_adapter).map((r) => r.name);
  select.replaceChildren(...(names.length ? names.map((n) => el("option", { value: n, text: n })) : [el("option", { value: "", text: t("ui.no_runs") })]));
  const pick = chosen && names.includes(chosen) ? chosen : (localStorage.getItem("thinktune.run") && names.includes(localStorage.getItem("thinktune.run")) ? localStorage.getItem("thinktune.run") : names[names.length - 1] || "");
  select.value = pick;
  select.onchange = () => { localStorage.setItem("thinktune.run", select.value); onChange(select.value); };
  return pick;
}

async function refreshGpuBadge() {
  try {
    const data = await api("/api/runs");
    const b = $("#gpu-busy");
    if (data.gpu_jobs.length) { b.textContent = t("ui.gpu_busy", { label: data.gpu_jobs[0].label }); b.classList.remove("hidden"); b.classList.add("running"); }
    else b.classList.add("hidden");
  } catch (e) { /* the next refresh tries again */ }
}

// ------------------------------------------------------------------------------------------ 1. runs

const Runs = {
  async load() {
    let data;
    try { data = await api("/api/runs"); } catch (e) { flash(e.message, true); return; }
    state.runs = data.runs;
    $("#runs-where").textContent = state.info ? t("runs.where", { runs: state.info.runs }) : "";
    $("#runs-empty").classList.toggle("hidden", data.runs.length > 0);
    this.render();
  },
  render() {
    const { key, dir } = state.sort;
    const rows = [...state.runs].sort((a, b) => {
      const x = a[key], y = b[key];
      if (x === y) return 0;
      if (x === null || x === undefined) return 1;
      if (y === null || y === undefined) return -1;
      return (x > y ? 1 : -1) * dir;
    });
    $$("#runs-table th[data-key]").forEach((th) => {
      th.classList.toggle("sorted-asc", th.dataset.key === key && dir > 0);
      th.classList.toggle("sorted-desc", th.dataset.key === key && dir < 0);
    });
    const body = $("#runs-table tbody");
    body.replaceChildren(...rows.map((r) => {
      const box = el("input", { type: "checkbox", "data-run": r.name, checked: state.selected.has(r.name) });
      box.addEventListener("change", () => { box.checked ? state.selected.add(r.name) : state.selected.delete(r.name); this.updateOverlayButton(); });
      const process = r.alive === null ? t("runs.unknown") : r.alive ? t("runs.alive") : t("runs.ended");
      return el("tr", { "data-run": r.name },
        el("td", {}, box),
        el("td", {}, el("a", { href: `#/live/${encodeURIComponent(r.name)}`, class: "mono", text: r.name })),
        el("td", {}, badge(r.status)),
        el("td", { class: r.alive ? "right" : "muted", text: process }),
        el("td", { class: "clip mono", title: r.model || "", text: shortPath(r.model) }),
        el("td", { class: "clip mono", title: r.data || "", text: shortPath(r.data) }),
        el("td", { class: "num", text: r.max_steps ? `${fmt.int(r.steps)}/${r.max_steps}` : fmt.int(r.steps) }),
        el("td", { class: "num", text: fmt.num(r.first_loss) }),
        el("td", { class: "num", text: fmt.num(r.last_loss) }),
        el("td", { class: "num", text: fmt.num(r.eval_loss) }),
        el("td", { class: "num", text: fmt.dur(r.wall_time_s) }),
        el("td", { class: "muted small", text: fmt.when(r.modified) }));
    }));
    this.updateOverlayButton();
  },
  updateOverlayButton() {
    const n = state.selected.size;
    $("#runs-overlay").disabled = n < 2 || n > 5;
    $("#runs-overlay").title = t("runs.select_hint");
  },
  async overlay() {
    const names = [...state.selected];
    let data;
    try { data = await api(`/api/overlay?runs=${names.map(encodeURIComponent).join(",")}`); } catch (e) { flash(e.message, true); return; }
    state.overlay = data;
    $("#overlay").classList.remove("hidden");
    this.drawOverlay();
    const diff = data.diff;
    const table = $("#overlay-diff");
    const head = el("tr", {}, el("th", { text: t("runs.setting") }), ...diff.runs.map((n, i) => el("th", {}, el("i", { class: `key c${i}` }), " ", n)));
    const rows = diff.rows.length
      ? diff.rows.map((r) => el("tr", {}, el("td", { class: "mono", text: r.key }), ...r.values.map((v) => el("td", { class: "mono", text: v === null || v === undefined ? "null" : typeof v === "object" ? JSON.stringify(v) : String(v) }))))
      : [el("tr", {}, el("td", { colspan: String(diff.runs.length + 1), class: "muted", text: t("runs.no_diff") }))];
    table.replaceChildren(el("thead", {}, head), el("tbody", {}, ...rows));
  },
  drawOverlay() {
    const data = state.overlay;
    if (!data) return;
    const series = [];
    Object.entries(data.curves).forEach(([name, c], i) => {
      series.push({ points: ema(c.train), cls: `overlay-line s-${i}` });
      series.push({ points: c.eval, cls: `overlay-eval s-${i}` });
    });
    drawChart($("#overlay-chart"), series, { log: $("#overlay-log").checked, xLabel: t("live.step") });
  },
};

// ------------------------------------------------------------------------------------------ 2. live run view

const Live = {
  source: null, pollTimer: null, target: null, train: new Map(), evals: new Map(), log: [], status: null, pos: "", errors: 0,
  close() {
    if (this.source) { this.source.close(); this.source = null; }
    clearTimeout(this.pollTimer); this.pollTimer = null;
  },
  async open(arg) {
    this.close();
    let run = arg, job = null;
    if (arg.startsWith("job:")) { job = arg.slice(4); run = null; }
    const picked = await fillRunPicker($("#live-pick"), run, (n) => { location.hash = `#/live/${encodeURIComponent(n)}`; });
    if (!run && !job) run = picked;
    if (!run && !job) { $("#live-name").textContent = ""; $("#live-hint").textContent = t("live.pick"); this.reset(); this.draw(); return; }
    this.target = { run, job };
    $("#live-name").textContent = run || job;
    $("#live-hint").textContent = "";
    this.reset();
    this.draw();
    this.connect();
  },
  reset() { this.train = new Map(); this.evals = new Map(); this.log = []; this.status = null; this.pos = ""; this.errors = 0; },
  query() {
    const q = new URLSearchParams();
    if (this.target.run) q.set("run", this.target.run);
    if (this.target.job) q.set("job", this.target.job);
    return q;
  },
  // ?poll=1 in the address: the polling fallback even where server-sent events work (proxies that buffer them)
  forcePoll: new URLSearchParams(location.search).get("poll") === "1",
  connect() {
    if (!window.EventSource || this.forcePoll) { this.poll(); return; }
    const q = this.query();
    if (this.pos) q.set("pos", this.pos);
    const src = new EventSource(`/api/stream?${q}`);
    this.source = src;
    $("#live-feed").textContent = t("live.feed_sse");
    const on = (name, fn) => src.addEventListener(name, (ev) => { this.pos = ev.lastEventId || this.pos; this.errors = 0; fn(JSON.parse(ev.data)); });
    on("metrics", (d) => this.onMetrics(d));
    on("log", (d) => this.onLog(d));
    on("status", (d) => this.onStatus(d));
    on("end", (d) => { this.onStatus(d); src.close(); this.source = null; $("#live-feed").textContent = t("live.feed_end"); refreshGpuBadge(); });
    src.onerror = () => {
      this.errors += 1;
      if (this.errors >= 3) { src.close(); this.source = null; this.poll(); } // the polling fallback
    };
  },
  async poll() {
    $("#live-feed").textContent = t("live.feed_poll");
    const q = this.query();
    if (this.pos) q.set("pos", this.pos);
    try {
      const data = await api(`/api/tail?${q}`);
      for (const e of data.events) { if (e.event === "metrics") this.onMetrics(e.data); else if (e.event === "log") this.onLog(e.data); }
      this.pos = data.pos;
      this.onStatus(data.status);
      if (data.ended) { $("#live-feed").textContent = t("live.feed_end"); return; }
    } catch (e) { /* try again */ }
    this.pollTimer = setTimeout(() => this.poll(), 1500);
  },
  onMetrics(d) {
    if (d.reset) { this.train = new Map(); this.evals = new Map(); }
    for (const r of d.records) {
      if (r.loss !== undefined && r.loss !== null) this.train.set(r.step, r);
      if (r.eval_loss !== undefined && r.eval_loss !== null) this.evals.set(r.step, r);
    }
    this.draw();
  },
  onLog(d) {
    pushLines(this.log, d.lines, d.reset);
    const pre = $("#live-log-tail");
    const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 8;
    pre.textContent = this.log.join("\n");
    if (atEnd) pre.scrollTop = pre.scrollHeight;
  },
  onStatus(st) {
    if (!st) return;
    this.status = st;
    if (st.run && this.target && !this.target.run) {
      this.target.run = st.run;
      $("#live-name").textContent = st.run;
      fillRunPicker($("#live-pick"), st.run, (n) => { location.hash = `#/live/${encodeURIComponent(n)}`; });
    }
    // once the job's run folder exists, the address names the run: a reload follows the run (and a resume of it)
    if (st.run && location.hash.startsWith("#/live/job:")) history.replaceState(null, "", `#/live/${encodeURIComponent(st.run)}`);
    const alive = !!(st.job && st.job.alive);
    $("#live-stop").disabled = !alive || !["train", "resume"].includes(st.job.kind);
    const s = st.summary || {};
    $("#live-resume").disabled = alive || !st.run || !st.resumable || s.status === "completed";
    this.renderStats();
  },
  renderStats() {
    const train = [...this.train.values()].sort((a, b) => a.step - b.step);
    const last = train[train.length - 1] || {};
    const ev = [...this.evals.values()].sort((a, b) => a.step - b.step);
    const s = (this.status && this.status.summary) || {};
    const job = this.status && this.status.job;
    const maxSteps = s.max_steps;
    let eta = null;
    const alive = job && job.alive;
    const recent = train.slice(-10);
    if (alive && maxSteps && recent.length >= 2) {
      const a = recent[0], b = recent[recent.length - 1];
      const rate = (b.time - a.time) / Math.max(1, b.step - a.step);
      eta = rate * (maxSteps - b.step);
    }
    const stat = (label, value) => el("div", { class: "stat" }, el("b", { text: value }), el("span", { text: label }));
    const stepText = last.step !== undefined ? (maxSteps ? `${last.step}/${maxSteps}` : String(last.step)) : t("ui.none");
    $("#live-stats").replaceChildren(
      el("div", { class: "stat" }, badge(job && job.alive ? "running" : s.status || (job ? job.status : "unknown")), el("span", { text: job ? job.label : "" })),
      stat(t("live.steps"), stepText),
      stat(t("live.loss"), fmt.num(last.loss)),
      stat(t("live.eval_loss"), fmt.num(ev.length ? ev[ev.length - 1].eval_loss : null)),
      stat(t("live.lr"), fmt.lr(last.learning_rate)),
      stat(t("live.tps"), last.tokens_per_s ? String(Math.round(last.tokens_per_s)) : t("ui.none")),
      stat(t("live.eta"), eta === null ? t("ui.none") : fmt.dur(eta)),
    );
    if (s.status === "interrupted" && !alive) $("#live-hint").textContent = t("live.resume_hint");
  },
  draw() {
    const train = [...this.train.values()].sort((a, b) => a.step - b.step);
    const evals = [...this.evals.values()].sort((a, b) => a.step - b.step);
    const raw = train.map((r) => [r.step, r.loss]);
    const chart = $("#live-chart");
    chart.dataset.trainPoints = String(raw.length);
    chart.dataset.evalPoints = String(evals.length);
    chart.dataset.steps = raw.map((p) => p[0]).join(",");
    drawChart(chart, [
      { points: raw, cls: "s-train-raw" },
      { points: ema(raw), cls: "s-train" },
      { points: evals.map((r) => [r.step, r.eval_loss]), cls: "s-eval", dots: "p-eval" },
    ], { log: $("#live-log").checked, xLabel: t("live.step"), empty: this.target ? t("live.waiting") : t("live.pick") });
    drawChart($("#live-lr"), [{ points: train.map((r) => [r.step, r.learning_rate]), cls: "s-lr" }], { yFormat: (v) => v.toExponential(1) });
    drawChart($("#live-tps"), [{ points: train.filter((r) => r.tokens_per_s).map((r) => [r.step, r.tokens_per_s]), cls: "s-tps" }], { yFormat: (v) => String(Math.round(v)) });
    this.renderStats();
  },
  async stop() {
    const job = this.status && this.status.job;
    if (!job) return;
    try { await api(`/api/jobs/${job.id}/stop`, {}); flash(t("live.stopping")); } catch (e) { flash(e.message, true); }
  },
  async resume() {
    const run = this.target && (this.target.run || (this.status && this.status.run));
    if (!run) return;
    try {
      const r = await api("/api/actions/resume", { run, force: false });
      flash(t("ui.started", { command: r.command }));
      this.close();
      this.target = { run, job: null };
      this.pos = ""; // the resumed job has its own log; metrics start again from the (truncated) file
      this.reset();
      this.connect();
    } catch (e) { flash(e.message, true); }
  },
};

// ------------------------------------------------------------------------------------------ 3. new run

const NewRun = {
  base: null, baseValues: {}, timer: null, doctorTimer: null, planTimer: null, example: 0, lastDoctorKey: "", lastPlanKey: "",
  async open(arg) {
    if (!state.schema) state.schema = await api("/api/schema");
    const sel = $("#new-base");
    if (!sel.options.length || arg) {
      const runsData = await api("/api/runs");
      sel.replaceChildren(
        el("optgroup", { label: "recipes" }, ...state.schema.recipes.map((r) => el("option", { value: `recipe:${r.name}`, text: t("new.recipe", { name: r.name }) }))),
        el("optgroup", { label: "runs" }, ...runsData.runs.map((r) => el("option", { value: `run:${r.name}`, text: t("new.from_run", { name: r.name }) }))),
      );
      const wanted = arg ? `run:${arg}` : localStorage.getItem("thinktune.base") || "recipe:demo-cpu";
      sel.value = [...sel.options].some((o) => o.value === wanted) ? wanted : sel.options[0].value;
      sel.onchange = () => { localStorage.setItem("thinktune.base", sel.value); this.loadBase(); };
      await this.loadGpus();
      await this.loadBase();
    }
  },
  baseSpec() {
    const [kind, ...rest] = $("#new-base").value.split(":");
    return { [kind]: rest.join(":") };
  },
  async loadBase() {
    const spec = this.baseSpec();
    const recipe = state.schema.recipes.find((r) => r.name === spec.recipe);
    $("#new-base-help").textContent = recipe ? recipe.description : "";
    let data;
    try { data = await api("/api/form/base", { base: spec }); } catch (e) { flash(e.message, true); return; }
    this.baseValues = data.values;
    this.renderForm();
    this.changed(true);
  },
  renderForm() {
    const box = $("#new-fields");
    const sections = {};
    for (const f of state.schema.fields) (sections[f.section] = sections[f.section] || []).push(f);
    box.replaceChildren(...Object.entries(sections).map(([section, fields]) => {
      const grid = el("div", { class: "fields-grid" });
      const det = el("details", { open: ["model", "data", "train"].includes(section) }, el("summary", { text: section }), grid);
      for (const f of fields) {
        const id = `f-${f.name.replace(".", "-")}`;
        const value = f.fixed ? state.schema.fixed[f.name] : this.baseValues[f.name] ?? "";
        let input;
        if (f.choices) {
          input = el("select", { id, name: f.name, disabled: f.fixed });
          const opts = f.optional ? ["", ...f.choices] : f.choices;
          for (const c of opts) input.append(el("option", { value: c, text: c === "" ? "null" : c }));
          input.value = value;
        } else {
          input = el("input", { id, name: f.name, type: "text", value, disabled: f.fixed, placeholder: f.optional ? "null" : "" });
        }
        input.addEventListener(f.choices ? "change" : "input", () => this.changed());
        const shown = f.default === "" ? (f.optional ? "null" : '""') : f.default;
        const note = f.fixed ? t("new.fixed") : `${t("new.default", { value: shown })} · ${f.type}`;
        grid.append(el("div", { class: "field", "data-field": f.name },
          el("label", { for: id, class: "mono", text: f.name }), input,
          el("p", { class: "help", text: f.help }), el("span", { class: "default mono", text: note })));
      }
      return det;
    }));
  },
  values() {
    const out = {};
    for (const input of $$("#new-fields [name]")) {
      if (input.disabled) continue;
      const base = this.baseValues[input.name] ?? "";
      input.closest(".field").classList.toggle("changed", input.value !== base);
      if (input.value !== base) out[input.name] = input.value;
    }
    return out;
  },
  changed(now = false) {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.validate(), now ? 0 : 350);
  },
  async validate() {
    const values = this.values();
    $$("#new-fields .field.bad").forEach((f) => f.classList.remove("bad"));
    $("#new-errors").replaceChildren();
    try {
      const r = await api("/api/form/validate", { base: this.baseSpec(), values });
      $("#new-command").textContent = r.command;
      $("#new-start").disabled = false;
      $("#new-errors").append(el("li", { class: "right", text: t("new.valid") }));
      this.refreshSide(values);
    } catch (e) {
      $("#new-command").textContent = "";
      $("#new-start").disabled = true;
      $("#new-errors").append(el("li", { text: e.message }));
      for (const name of (e.data && e.data.fields) || []) { const f = $(`#new-fields [data-field="${name}"]`); if (f) f.classList.add("bad"); }
    }
  },
  refreshSide(values) {
    const key = (prefixes) => JSON.stringify(Object.entries({ ...this.baseValues, ...values }).filter(([k]) => prefixes.some((p) => k.startsWith(p))));
    const dk = JSON.stringify([this.baseSpec(), key(["model.", "data."])]);
    if (dk !== this.lastDoctorKey) { this.lastDoctorKey = dk; this.example = 0; this.doctor(values); }
    const pk = JSON.stringify([this.baseSpec(), key(["model.", "data.", "lora.", "train.per_device", "train.gradient", "train.optim", "train.padding"]), $("#plan-gpu").value]);
    if (pk !== this.lastPlanKey) { this.lastPlanKey = pk; this.plan(values); }
  },
  async doctor(values) {
    const box = $("#doctor");
    box.classList.add("muted");
    box.textContent = t("ui.loading");
    const ticket = (this.doctorTicket = (this.doctorTicket || 0) + 1);
    let d;
    try { d = await api("/api/form/doctor", { base: this.baseSpec(), values, example: this.example }); }
    catch (e) { if (ticket === this.doctorTicket) box.textContent = e.message; return; }
    if (ticket !== this.doctorTicket) return;
    box.classList.remove("muted");
    const rep = d.report, lp = rep.length_policy, data = rep.data, L = rep.lengths.total || {};
    const cut = Object.entries(lp.truncation_would || {}).filter(([k, n]) => n && k !== "fits").map(([k, n]) => `${k} ${n}`).join(", ");
    const hist = svgEl("svg", { viewBox: "0 0 520 150", class: "chart", id: "doctor-hist" });
    barChart(hist, d.histogram, d.max_length);
    const parts = [
      el("dl", { class: "kv" },
        el("dt", { text: t("doctor.examples") }), el("dd", { text: `${d.examples} (train ${rep.splits.train}, validation ${rep.splits.validation})` }),
        el("dt", { text: t("doctor.family") }), el("dd", { class: "mono", text: rep.template.family }),
        el("dt", { text: t("doctor.lengths") }), el("dd", { text: `${fmt.int(L.p50)} / ${fmt.int(L.p90)} / ${fmt.int(L.p99)} / ${fmt.int(L.max)}` })),
      hist,
      el("p", { class: d.over ? "wrong" : "right", text: t("doctor.over", { max_length: d.max_length, over: d.over }) }),
      el("p", { text: t("doctor.policy", { policy: lp.policy, kept: lp.kept, dropped: lp.dropped.length, shortened: lp.shortened.length }) }),
    ];
    if (cut) parts.push(el("p", { class: "muted small", text: t("doctor.would_cut", { text: cut }) }));
    parts.push(el("p", { class: "muted small", text: `${t("doctor.bad_rows", { n: (data.bad_rows || []).length })} · ${t("doctor.duplicates", { n: data.duplicates_removed || 0 })}` }));
    if (d.example) {
      const x = d.example;
      parts.push(el("h3", { text: t("doctor.example", { index: x.index + 1, total: x.lengths.total }) }));
      parts.push(el("div", { class: "example", id: "doctor-example" }, el("span", { class: "prompt", text: x.prompt }), el("span", { class: "trained", text: x.reasoning + x.answer })));
      parts.push(el("p", { class: x.end_of_turn_trained ? "right small" : "wrong small", text: t("doctor.eot", { eot: x.end_of_turn, ok: x.end_of_turn_trained ? "yes" : "NO" }) }));
      parts.push(el("button", { type: "button", class: "ghost", text: t("doctor.next"), onclick: () => { this.example = (this.example + 1) % Math.max(1, d.examples); this.doctor(this.values()); } }));
    }
    box.replaceChildren(...parts);
  },
  async loadGpus() {
    const sel = $("#plan-gpu");
    try {
      const data = await api("/api/gpus");
      sel.replaceChildren(...data.gpus.map((g) => el("option", { value: String(g.bytes), text: g.label })));
      const saved = localStorage.getItem("thinktune.gpu");
      if (saved && data.gpus.some((g) => String(g.bytes) === saved)) sel.value = saved;
    } catch (e) { flash(e.message, true); }
    sel.onchange = () => { localStorage.setItem("thinktune.gpu", sel.value); this.lastPlanKey = ""; this.refreshSide(this.values()); };
  },
  async plan(values) {
    const box = $("#plan");
    box.textContent = t("ui.loading");
    const ticket = (this.planTicket = (this.planTicket || 0) + 1);
    let p;
    try { p = await api("/api/form/plan", { base: this.baseSpec(), values, vram: Number($("#plan-gpu").value) }); }
    catch (e) { if (ticket === this.planTicket) box.textContent = e.message; return; }
    if (ticket !== this.planTicket) return;
    const GB = 2 ** 30, gib = (n) => `${(n / GB).toFixed(2)} GiB`;
    const off = p.estimates["checkpointing off"], on = p.estimates["checkpointing on"], rec = p.recommendation;
    const budget = p.vram_bytes;
    const bar = svgEl("svg", { viewBox: "0 0 520 54", class: "chart", id: "plan-bar" });
    const comps = Object.entries(off.components);
    const scale = 500 / Math.max(budget, off.total);
    let x = 10;
    comps.forEach(([name, n], i) => {
      const w = Math.max(0, n * scale);
      const r = svgEl("rect", { x, y: 8, width: w, height: 18, class: `bar s-${i % 5}` });
      const title = svgEl("title"); title.textContent = `${name}: ${gib(n)}`; r.append(title);
      bar.append(r); x += w;
    });
    bar.append(svgEl("line", { x1: 10 + budget * scale, x2: 10 + budget * scale, y1: 2, y2: 32, class: "limit" }));
    const lbl = svgEl("text", { x: 10, y: 46 }); lbl.textContent = `${gib(off.total)} / ${gib(budget)}`; bar.append(lbl);
    box.classList.remove("muted");
    box.replaceChildren(
      el("dl", { class: "kv" },
        el("dt", { text: "model" }), el("dd", { class: "mono", text: `${p.model} (${(p.params / 1e9).toFixed(2)}B)` }),
        el("dt", { text: t("plan.ckpt_off") }), el("dd", { class: off.total <= budget ? "fits" : "nofit", text: `${gib(off.total)} — ${off.total <= budget ? t("plan.fits") : t("plan.no_fit")}` }),
        el("dt", { text: t("plan.ckpt_on") }), el("dd", { class: on.total <= budget ? "fits" : "nofit", text: `${gib(on.total)} — ${on.total <= budget ? t("plan.fits") : t("plan.no_fit")}` })),
      bar,
      el("h3", { text: t("plan.components") }),
      el("dl", { class: "kv small" }, ...comps.flatMap(([name, n]) => [el("dt", { class: "mono", text: name }), el("dd", { text: gib(n) })])),
      el("h3", { text: t("plan.recommend") }),
      el("p", { class: rec.fits ? "fits" : "nofit", text: rec.fits ? t("plan.fits") : t("plan.no_fit") }),
      el("pre", { class: "cmd", text: rec.overrides.length ? rec.overrides.join(" ") : t("plan.none") }),
      ...rec.reasons.map((r) => el("p", { class: "muted small", text: r })),
    );
  },
  async writeReport() {
    try {
      const r = await api("/api/actions/inspect-data", { base: this.baseSpec(), values: this.values() });
      flash(t("ui.started", { command: r.command }));
      if (this.follow) this.follow.close();
      this.follow = followJob(r.job.id, $("#doctor-log"));
    } catch (e) { flash(e.message, true); }
  },
  async start() {
    try {
      const r = await api("/api/actions/train", { base: this.baseSpec(), values: this.values(), force: $("#new-force").checked });
      flash(t("ui.started", { command: r.command }));
      location.hash = `#/live/job:${r.job.id}`;
    } catch (e) { flash(e.message, true); }
  },
};

// ------------------------------------------------------------------------------------------ a job's log (results, export)

// A line that ends with "\r" is a progress bar redrawing itself: the next line replaces it, as in a terminal.
function pushLines(into, lines, reset) {
  if (reset) { into.length = 0; into.cr = false; }
  for (const line of lines) {
    if (into.cr) into.pop();
    into.cr = line.endsWith("\r");
    into.push(into.cr ? line.slice(0, -1) : line);
  }
  if (into.length > 800) into.splice(0, into.length - 800);
}

function followJob(jobId, pre, onEnd) {
  const lines = [];
  const src = new EventSource(`/api/stream?job=${encodeURIComponent(jobId)}`);
  src.addEventListener("log", (ev) => {
    const d = JSON.parse(ev.data);
    pushLines(lines, d.lines, d.reset);
    pre.textContent = lines.slice(-400).join("\n");
    pre.scrollTop = pre.scrollHeight;
  });
  src.addEventListener("end", (ev) => { src.close(); onEnd && onEnd(JSON.parse(ev.data), lines); });
  return src;
}

// ------------------------------------------------------------------------------------------ 4. evaluate and compare

const HEALTH = ["closed_think_share", "stopped_share", "hit_max_new_tokens_share", "reasoning_tokens.median", "reasoning_tokens.p90",
  "answer_tokens.median", "answer_tokens.p90", "repeat_rate_mean", "looping_share", "language_match_share"];
const lookup = (obj, dotted) => dotted.split(".").reduce((o, k) => (o && typeof o === "object" ? o[k] : undefined), obj);
const isShare = (key) => key.endsWith("_share") || key.endsWith("_mean");
const healthValue = (key, v) => (v === undefined || v === null ? t("ui.none") : isShare(key) ? fmt.pct(v) : fmt.int(v));

const Results = {
  run: null, follow: null,
  async open(arg) {
    this.run = await fillRunPicker($("#results-pick"), arg || currentRunArg(), (n) => { location.hash = `#/results/${encodeURIComponent(n)}`; });
    for (const id of ["eval-benchmark", "eval-limit", "eval-base", "compare-benchmark", "compare-limit"]) $(`#${id}`).oninput = () => this.preview();
    $("#eval-base").onchange = () => this.preview();
    await this.load();
    this.preview();
  },
  params(kind) {
    if (kind === "eval") return { benchmark: $("#eval-benchmark").value.trim() || null, limit: $("#eval-limit").value || null, base: $("#eval-base").checked };
    return { benchmark: $("#compare-benchmark").value.trim() || null, limit: $("#compare-limit").value || null };
  },
  async preview() {
    for (const kind of ["eval", "compare"]) {
      const pre = $(`#${kind}-command`);
      if (!this.run) { pre.textContent = ""; continue; }
      try {
        const r = await api(`/api/actions/${kind}`, { run: this.run, params: this.params(kind), dry_run: true });
        pre.textContent = r.command; pre.classList.remove("wrong"); $(`#${kind}-start`).disabled = false;
      } catch (e) { pre.textContent = e.message; pre.classList.add("wrong"); $(`#${kind}-start`).disabled = true; }
    }
  },
  async start(kind) {
    if (!this.run) return;
    try {
      const body = kind === "report" ? { run: this.run } : { run: this.run, params: this.params(kind), force: $("#results-force").checked };
      const r = await api(`/api/actions/${kind}`, body);
      flash(t("ui.started", { command: r.command }));
      $("#results-job").classList.remove("hidden");
      if (this.follow) this.follow.close();
      this.follow = followJob(r.job.id, $("#results-log"), () => { this.load(); this.preview(); refreshGpuBadge(); });
    } catch (e) { flash(e.message, true); }
  },
  async load() {
    const evBox = $("#results-evals"), cmpBox = $("#results-compare");
    if (!this.run) { evBox.replaceChildren(); cmpBox.replaceChildren(); return; }
    let d;
    try { d = await api(`/api/runs/${encodeURIComponent(this.run)}`); } catch (e) { flash(e.message, true); return; }
    const link = $("#report-open");
    link.classList.toggle("hidden", !d.row.report);
    link.href = `/api/runs/${encodeURIComponent(this.run)}/report.html`;
    // evaluations
    const evals = Object.entries(d.evals);
    const evParts = [el("h2", { text: t("results.eval") })];
    if (!evals.length) evParts.push(el("p", { class: "muted", text: t("results.no_evals") }));
    for (const [name, e] of evals) {
      const s = e.summary;
      evParts.push(el("h3", { class: "mono", text: `eval_${name}: ${s.model}${s.adapter ? " + adapter" : ""}` }));
      const loss = s.heldout_loss;
      if (loss) {
        evParts.push(el("table", { class: "grid" },
          el("thead", {}, el("tr", {}, el("th", { text: `${t("results.heldout")} (${loss.examples})` }), el("th", { class: "num", text: t("results.loss") }), el("th", { class: "num", text: t("results.perplexity") }), el("th", { class: "num", text: t("results.tokens") }))),
          el("tbody", {}, ...["reasoning", "answer", "completion"].filter((k) => loss[k]).map((k) => el("tr", {}, el("td", { text: k }), el("td", { class: "num", text: fmt.num(loss[k].loss) }), el("td", { class: "num", text: fmt.num(loss[k].perplexity, 2) }), el("td", { class: "num", text: String(loss[k].tokens) }))))));
      }
      const benches = Object.entries(s.benchmarks || {});
      if (benches.length) {
        evParts.push(el("table", { class: "grid" },
          el("thead", {}, el("tr", {}, el("th", { text: t("results.benchmarks") }), el("th", { class: "num", text: t("results.accuracy") }), el("th", { class: "num", text: t("results.questions") }), el("th", { class: "num", text: t("results.unparseable") }), el("th", { class: "num", text: t("results.baselines") }))),
          el("tbody", {}, ...benches.map(([bn, b]) => el("tr", {}, el("td", { class: "mono", text: bn }),
            el("td", { class: "num", text: `${fmt.pct(b.accuracy)} [${fmt.pct(b.ci95[0])}, ${fmt.pct(b.ci95[1])}]` }),
            el("td", { class: "num", text: String(b.questions) }), el("td", { class: "num", text: String(b.unparseable) }),
            el("td", { class: "num", text: `${b.baselines.constant_letter} ${fmt.pct(b.baselines.constant_letter_accuracy)} / ${fmt.pct(b.baselines.random)}` }))))));
      }
      const h = (s.health || {}).all || {};
      evParts.push(el("table", { class: "grid" },
        el("thead", {}, el("tr", {}, el("th", { text: `${t("results.health")} (${h.generations ?? 0})` }), el("th", { class: "num", text: "" }))),
        el("tbody", {}, ...HEALTH.map((k) => el("tr", {}, el("td", { text: t(`health.${k}`) }), el("td", { class: "num", text: healthValue(k, lookup(h, k)) }))))));
    }
    evBox.replaceChildren(...evParts);
    // comparison
    const cmp = d.compare, parts = [el("h2", { text: t("results.compare") })];
    if (!cmp) parts.push(el("p", { class: "muted", text: t("results.no_compare") }));
    else {
      parts.push(el("p", { text: t("results.answers_changed", { n: cmp.answers_changed, total: cmp.questions }) }));
      const rows = HEALTH.map((k) => {
        const b = lookup(cmp.base.health, k), tu = lookup(cmp.tuned.health, k);
        const sign = (v) => (v >= 0 ? "+" : "");
        const ch = b === undefined || tu === undefined || b === null || tu === null ? "" : isShare(k) ? `${sign(tu - b)}${(100 * (tu - b)).toFixed(1)} pts` : `${sign(tu - b)}${Math.round(tu - b)}`;
        return el("tr", {}, el("td", { text: t(`health.${k}`) }), el("td", { class: "num", text: healthValue(k, b) }), el("td", { class: "num", text: healthValue(k, tu) }), el("td", { class: "num", text: ch }));
      });
      if (cmp.base.accuracy && cmp.tuned.accuracy) {
        const acc = (a) => `${fmt.pct(a.accuracy)} [${fmt.pct(a.ci95[0])}, ${fmt.pct(a.ci95[1])}]`;
        rows.unshift(el("tr", {}, el("td", { text: `${t("results.accuracy")} (${cmp.base.accuracy.questions})` }), el("td", { class: "num", text: acc(cmp.base.accuracy) }), el("td", { class: "num", text: acc(cmp.tuned.accuracy) }), el("td", { class: "num", text: `${(100 * (cmp.tuned.accuracy.accuracy - cmp.base.accuracy.accuracy)).toFixed(1)} pts` })));
      }
      parts.push(el("table", { class: "grid", id: "compare-table" },
        el("thead", {}, el("tr", {}, el("th", { text: "" }), el("th", { class: "num", text: t("results.base") }), el("th", { class: "num", text: t("results.tuned") }), el("th", { class: "num", text: t("results.change") }))),
        el("tbody", {}, ...rows)));
      parts.push(el("h3", { text: t("results.pairs") }));
      for (const p of d.pairs) {
        const side = (name, o) => el("div", { class: "side-answer" },
          el("h4", {}, t(`results.${name}`), o.correct === true ? el("span", { class: "right", text: " ✓" }) : o.correct === false ? el("span", { class: "wrong", text: " ✗" }) : null),
          o.reasoning ? el("details", { class: "reasoning" }, el("summary", { text: t("results.reasoning", { n: o.reasoning_tokens }) }), o.reasoning) : null,
          o.answer ? el("div", { class: "answer", text: o.answer }) : el("div", { class: "muted small", text: t("results.no_answer") }));
        parts.push(el("div", { class: "pair" },
          el("div", { class: "q", text: p.question }),
          p.reference || p.reference_letter ? el("div", { class: "muted small ref", text: `${t("results.reference")}: ${p.reference_letter || ""} ${p.reference || ""}` }) : null,
          side("base", p.base), side("tuned", p.tuned)));
      }
    }
    cmpBox.replaceChildren(...parts);
  },
};

// ------------------------------------------------------------------------------------------ 5. chat

const Chat = {
  id: null, run: null, info: null,
  async open(arg) {
    this.run = await fillRunPicker($("#chat-pick"), arg || currentRunArg(), (n) => { this.closeWorker(); this.run = n; }, { adapterOnly: true });
  },
  async closeWorker() {
    if (this.id) { const id = this.id; this.id = null; try { await api(`/api/chat/${id}/close`, {}); } catch (e) { /* gone already */ } }
    $("#chat-send").disabled = true; $("#chat-reset").disabled = true;
    $("#chat-state").textContent = t("chat.closed");
  },
  async load() {
    await this.closeWorker();
    if (!this.run) return;
    try {
      const r = await api("/api/chat", { run: this.run, force: false });
      this.id = r.chat;
      $("#chat-state").textContent = t("chat.loading");
      for (;;) {
        await new Promise((res) => setTimeout(res, 700));
        if (!this.id) return;
        const st = await api(`/api/chat/${this.id}`);
        if (st.error) { $("#chat-state").textContent = st.error; return; }
        if (st.ready) { this.info = st.ready; break; }
        if (!st.alive) { $("#chat-state").textContent = "the chat worker stopped"; return; }
      }
      $("#chat-state").textContent = t("chat.ready", { model: this.info.model, family: this.info.family });
      $("#chat-think-wrap").classList.toggle("hidden", !this.info.can_toggle_thinking);
      $("#chat-send").disabled = false; $("#chat-reset").disabled = false;
    } catch (e) { flash(e.message, true); }
  },
  async send(ev) {
    ev.preventDefault();
    const q = $("#chat-input").value.trim();
    if (!q || !this.id) return;
    $("#chat-input").value = "";
    const both = $("#chat-both").checked;
    const sides = both ? ["base", "tuned"] : ["tuned"];
    const turn = el("div", { class: `turn ${both ? "both" : ""}` });
    const bubbles = {};
    for (const s of sides) {
      const reasoning = el("div", { class: "reasoning hidden" });
      const answer = el("div", { class: "answer" });
      const stats = el("div", { class: "muted small" });
      bubbles[s] = { reasoning, answer, stats };
      turn.append(el("div", { class: "bubble", "data-side": s }, el("h4", { text: t(`results.${s}`) }), reasoning, answer, stats));
    }
    $("#chat-log").append(el("div", { class: "bubble user" }, el("h4", { text: t("chat.you") }), q), turn);
    $("#chat-send").disabled = true;
    const thinking = this.info && this.info.can_toggle_thinking ? $("#chat-think").checked : null;
    try {
      const r = await fetch(`/api/chat/${this.id}/ask`, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ question: q, sides, thinking }) });
      if (!r.ok) throw new Error((await r.json()).error);
      const reader = r.body.getReader();
      const dec = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let i;
        while ((i = buf.indexOf("\n")) >= 0) {
          const line = buf.slice(0, i); buf = buf.slice(i + 1);
          if (!line.trim()) continue;
          const m = JSON.parse(line);
          const b = bubbles[m.side];
          if (m.error) flash(m.error, true);
          else if (b && m.kind === "reasoning") { b.reasoning.classList.remove("hidden"); b.reasoning.textContent += m.text; }
          else if (b && m.kind === "answer") b.answer.textContent += m.text;
          else if (b && m.done) {
            const rate = m.done.seconds > 0 ? (m.done.new_tokens / m.done.seconds).toFixed(1) : "0";
            b.stats.textContent = t("chat.stats", { tokens: m.done.new_tokens, rate }) + (m.done.stopped ? "" : ` · ${t("chat.no_eot")}`);
            if (!b.answer.textContent.trim()) { b.answer.textContent = t("results.no_answer"); b.answer.classList.add("muted"); }
          }
        }
      }
    } catch (e) { flash(e.message, true); }
    $("#chat-send").disabled = false;
  },
  async reset() {
    if (!this.id) return;
    await fetch(`/api/chat/${this.id}/reset`, { method: "POST", headers: { "Content-Type": "application/json" }, body: "{}" });
    $("#chat-log").replaceChildren();
  },
};

// ------------------------------------------------------------------------------------------ 6. export

const Export = {
  run: null, follow: null,
  async open(arg) {
    this.run = await fillRunPicker($("#export-pick"), arg || currentRunArg(), (n) => { this.run = n; this.preview(); this.existing(); }, { adapterOnly: true });
    $$("input[name=export-format]").forEach((r) => { r.onchange = () => this.preview(); });
    $("#export-gguf-type").onchange = () => this.preview();
    this.preview();
    this.existing();
  },
  params() { return { format: $("input[name=export-format]:checked").value, gguf_type: $("#export-gguf-type").value }; },
  async preview() {
    const pre = $("#export-command");
    $("#export-gguf-type").closest(".field").classList.toggle("hidden", this.params().format !== "gguf");
    if (!this.run) { pre.textContent = ""; return; }
    try { const r = await api("/api/actions/export", { run: this.run, params: this.params(), dry_run: true }); pre.textContent = r.command; pre.classList.remove("wrong"); $("#export-start").disabled = false; }
    catch (e) { pre.textContent = e.message; pre.classList.add("wrong"); $("#export-start").disabled = true; }
  },
  async existing() {
    if (!this.run) return;
    try { const d = await api(`/api/runs/${encodeURIComponent(this.run)}`); $("#export-existing").textContent = d.exports.length ? t("export.existing", { list: d.exports.join(", ") }) : ""; } catch (e) { /* shown elsewhere */ }
  },
  async start() {
    try {
      const r = await api("/api/actions/export", { run: this.run, params: this.params(), force: $("#export-force").checked });
      flash(t("ui.started", { command: r.command }));
      $("#export-check").classList.add("hidden");
      if (this.follow) this.follow.close();
      this.follow = followJob(r.job.id, $("#export-log"), (st, lines) => {
        const checks = lines.filter((l) => /round trip|check-template|template|OK |FAIL/.test(l) && /OK|FAIL|match|differ/i.test(l));
        $("#export-check-lines").replaceChildren(...checks.map((l) => el("li", { class: /FAIL|differ/i.test(l) ? "fail" : "ok", text: l })));
        $("#export-check").classList.toggle("hidden", !checks.length);
        this.preview(); this.existing(); refreshGpuBadge();
      });
    } catch (e) { flash(e.message, true); }
  },
};

// ------------------------------------------------------------------------------------------ start

async function main() {
  $("#lang").addEventListener("change", async () => { localStorage.setItem("thinktune.lang", $("#lang").value); await loadMessages($("#lang").value); route(); });
  $("#theme").addEventListener("click", () => {
    const next = { auto: "light", light: "dark", dark: "auto" }[$("#theme").dataset.mode || "auto"];
    localStorage.setItem("thinktune.theme", next);
    applyTheme(next);
  });
  $$("#runs-table th[data-key]").forEach((th) => th.addEventListener("click", () => {
    const key = th.dataset.key;
    state.sort = { key, dir: state.sort.key === key ? -state.sort.dir : 1 };
    Runs.render();
  }));
  $("#runs-refresh").addEventListener("click", () => Runs.load());
  $("#runs-overlay").addEventListener("click", () => Runs.overlay());
  $("#overlay-log").addEventListener("change", () => Runs.drawOverlay());
  $("#live-log").addEventListener("change", () => Live.draw());
  $("#live-stop").addEventListener("click", () => Live.stop());
  $("#live-resume").addEventListener("click", () => Live.resume());
  $("#new-start").addEventListener("click", () => NewRun.start());
  $("#doctor-write").addEventListener("click", () => NewRun.writeReport());
  $("#new-form").addEventListener("submit", (e) => e.preventDefault());
  $("#eval-start").addEventListener("click", () => Results.start("eval"));
  $("#compare-start").addEventListener("click", () => Results.start("compare"));
  $("#report-write").addEventListener("click", () => Results.start("report"));
  $("#chat-open").addEventListener("click", () => Chat.load());
  $("#chat-reset").addEventListener("click", () => Chat.reset());
  $("#chat-form").addEventListener("submit", (e) => Chat.send(e));
  $("#chat-input").addEventListener("keydown", (e) => { if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("#chat-form").requestSubmit(); } });
  $("#export-start").addEventListener("click", () => Export.start());
  window.addEventListener("hashchange", route);
  window.addEventListener("beforeunload", () => { if (Chat.id) navigator.sendBeacon && fetch(`/api/chat/${Chat.id}/close`, { method: "POST", headers: { "Content-Type": "application/json" }, body: "{}", keepalive: true }); });
  await loadMessages(initialLang());
  try { state.info = await api("/api/info"); $("#footer-info").textContent = `thinktune ${state.info.version} · ${state.info.runs}`; } catch (e) { flash(e.message, true); }
  route();
  refreshGpuBadge();
  setInterval(refreshGpuBadge, 5000);
  setInterval(() => { if (!$("#view-runs").classList.contains("hidden")) Runs.load(); }, 5000);
}

window.thinktune = { state, Live, NewRun, Runs, Results, Chat, Export };
document.addEventListener("DOMContentLoaded", main);
