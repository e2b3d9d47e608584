/* Floopy console: plain JS, no build step. Every value from the API is inserted as text
   (textContent / attributes), never as HTML: bodies are user content. */
"use strict";

const $ = (sel) => document.querySelector(sel);
const KEY_STORE = "floopy_console_key";
const COLORS = ["#3b5bdb", "#e8590c", "#2b8a3e", "#ae3ec9", "#1098ad", "#c92a2a", "#f59f00", "#495057"];

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "style") el.style.cssText = v;  /* CSSOM: allowed by the CSP, a style attribute is not */
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/* ``el.append`` for children that may be null or false (conditional parts of a page). */
function put(el, ...kids) {
  el.append(...kids.flat().filter((k) => k !== null && k !== undefined && k !== false));
  return el;
}

/* ---------- formatting ---------- */
const fmt = {
  n: (v) => (v ?? 0).toLocaleString("en-US"),
  usd: (v) => (v === null || v === undefined ? "—" : v === 0 ? "$0" : "$" + (v < 0.01 && v > 0 ? v.toFixed(6) : v.toFixed(v < 10 ? 4 : 2))),
  ms: (v) => (v === null || v === undefined ? "—" : v === 0 ? "0" : v >= 999.5 ? (v / 1000).toFixed(2) + " s" : v.toFixed(v < 10 ? 2 : 0) + " ms"),
  c: (v) => new Intl.NumberFormat("en-US", { notation: "compact", maximumFractionDigits: 1 }).format(v ?? 0),
  pct: (v) => ((v ?? 0) * 100).toFixed(1) + "%",
  time: (ms) => new Date(ms).toISOString().replace("T", " ").slice(0, 19),
  short: (ms, step) => {
    const d = new Date(ms).toISOString();
    return step >= 86400 ? d.slice(5, 10) : d.slice(5, 10) + " " + d.slice(11, 16);
  },
  dur: (ms) => (ms < 1000 ? ms + " ms" : ms < 60000 ? (ms / 1000).toFixed(1) + " s" : ms < 3600000 ? (ms / 60000).toFixed(1) + " min" : (ms / 3600000).toFixed(1) + " h"),
};

function cacheText(r) {
  if (!r.cache_status) return "";
  const parts = [r.cache_status + (r.cache_tier ? ` (${r.cache_tier})` : "")];
  if (r.cache_similarity !== null && r.cache_similarity !== undefined) parts.push(`similarity ${Number(r.cache_similarity).toFixed(4)} ≥ ${Number(r.cache_threshold).toFixed(2)}`);
  if (r.cost_saved_usd) parts.push(`saved ${fmt.usd(r.cost_saved_usd)}`);
  if (r.cache_error) parts.push(`failed open: ${r.cache_error}`);
  return parts.join(", ");
}

function statusBadge(code) {
  const cls = code >= 500 ? "s5" : code >= 400 ? "s4" : "s2";
  return h("span", { class: `badge ${cls}` }, code || "—");
}

/* ---------- state, API ---------- */
const state = {
  key: sessionStorage.getItem(KEY_STORE) || "",
  rangeS: Number(localStorage.getItem("floopy_console_range") || 604800),
};

function rangeParams() {
  const end = Date.now();
  return { start: end - state.rangeS * 1000, end };
}

function bucketFor(rangeS) {
  if (rangeS <= 2 * 86400) return "1h";
  if (rangeS <= 8 * 86400) return "6h";
  return "1d";
}

function banner(text) {
  const b = $("#banner");
  b.textContent = text || "";
  b.hidden = !text;
}

function urlFor(path, params) {
  const url = new URL(path, location.origin);
  for (const [k, v] of Object.entries(params || {})) {
    if (v === "" || v === null || v === undefined) continue;
    for (const one of Array.isArray(v) ? v : [v]) url.searchParams.append(k, one);
  }
  return url;
}

/* Any JSON call of the gateway with the console's key; a failure throws its error code. */
async function call(method, path, { params, body } = {}) {
  const headers = { Authorization: "Bearer " + state.key };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(urlFor(path, params), { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const data = await res.json().catch(() => ({}));
  if (!res.ok) {
    const err = new Error((data.error && data.error.message) || res.statusText);
    err.status = res.status;
    err.code = data.error && data.error.code;
    throw err;
  }
  return data;
}

const api = (path, params) => call("GET", "/console/api" + path, { params });

/* ---------- charts (inline SVG) ---------- */
const SVG = "http://www.w3.org/2000/svg";
function s(tag, attrs, ...kids) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  for (const k of kids) el.append(k instanceof Node ? k : document.createTextNode(String(k)));
  return el;
}

function chart(title, series, { kind = "line", format = fmt.c, step = 3600 } = {}) {
  const W = 560, H = 190, L = 58, R = 10, T = 10, B = 24;
  const seen = [...new Set(series.flatMap((se) => se.points.map((p) => p[0])))].sort((a, b) => a - b);
  const xs = [];  /* every bucket between the first and the last, so gaps show as gaps */
  if (seen.length) for (let x = seen[0]; x <= seen[seen.length - 1] && xs.length < 2000; x += step) xs.push(x);
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "xMidYMid meet", role: "img", "aria-label": title });
  const box = h("div", { class: "chart" }, h("div", { class: "title" }, title));
  if (!xs.length) {
    box.append(h("div", { class: "empty" }, "No data in this range"));
    return box;
  }
  const stacked = kind === "bar";
  const totals = xs.map((x) => series.reduce((acc, se) => acc + (se.points.find((p) => p[0] === x)?.[1] || 0), 0));
  const ticks = niceTicks(Math.max(0, ...(stacked ? totals : series.flatMap((se) => se.points.map((p) => p[1] || 0)))), format === fmt.c);
  const maxV = ticks[ticks.length - 1];
  const band = (W - L - R) / xs.length;
  const px = (i) => L + (i + 0.5) * band;  /* band centres: bars never cover the y labels */
  const py = (v) => T + (H - T - B) * (1 - v / maxV);
  for (const v of ticks) {
    const y = py(v);
    svg.append(s("line", { x1: L, x2: W - R, y1: y, y2: y, stroke: "#eef0f3" }));
    svg.append(s("text", { x: L - 6, y: y + 4, "text-anchor": "end", "font-size": 10, fill: "#667085" }, format(v)));
  }
  const every = Math.ceil(xs.length / 6);
  for (let i = 0; i < xs.length; i += every) {
    svg.append(s("text", { x: px(i), y: H - 6, "text-anchor": "middle", "font-size": 10, fill: "#667085" }, fmt.short(xs[i] * 1000, step)));
  }
  if (stacked) {
    const bw = Math.max(1, band * 0.7);
    const base = xs.map(() => 0);
    series.forEach((se, k) => {
      xs.forEach((x, i) => {
        const v = se.points.find((p) => p[0] === x)?.[1] || 0;
        if (!v) return;
        const y0 = py(base[i]), y1 = py(base[i] + v);
        base[i] += v;
        const r = s("rect", { x: px(i) - bw / 2, y: y1, width: bw, height: Math.max(0.5, y0 - y1), fill: se.color || COLORS[k % COLORS.length] });
        r.append(s("title", {}, `${se.name}: ${format(v)} at ${fmt.short(x * 1000, step)}`));
        svg.append(r);
      });
    });
  } else {
    series.forEach((se, k) => {
      const pts = xs.map((x, i) => [px(i), py(se.points.find((p) => p[0] === x)?.[1] || 0)]);
      svg.append(s("polyline", { points: pts.map((p) => p.join(",")).join(" "), fill: "none", stroke: se.color || COLORS[k % COLORS.length], "stroke-width": 2 }));
    });
  }
  box.append(svg);
  if (series.length > 1 || series[0].name) {
    box.append(h("div", { class: "legend" }, series.map((se, k) => h("span", {}, h("i", { style: `background:${se.color || COLORS[k % COLORS.length]}` }), se.name || "—"))));
  }
  return box;
}

/* Round gridlines (1, 2, 2.5 or 5 × 10^k): a count axis never reads 37.5 requests, a cost
   axis never $0.097. */
function niceTicks(max, integer) {
  if (!(max > 0)) return [0, 1];
  const raw = max / 4, mag = 10 ** Math.floor(Math.log10(raw));
  const steps = [1, 2, 2.5, 5, 10].map((m) => m * mag).filter((st) => !integer || Number.isInteger(st));
  const step = Math.max(integer ? 1 : 0, steps.find((st) => st >= raw) || 10 * mag);
  const ticks = [];
  for (let i = 0; ticks.length < 8; i++) {
    const v = Number((i * step).toPrecision(12));
    ticks.push(v);
    if (v >= max) break;
  }
  return ticks;
}

function byField(rows, field, seriesKey = "series") {
  const groups = new Map();
  for (const r of rows) {
    const name = r[seriesKey] ?? "";
    if (!groups.has(name)) groups.set(name, []);
    groups.get(name).push([r.t, r[field]]);
  }
  return [...groups.entries()].map(([name, points]) => ({ name, points }));
}

/* ---------- pages ---------- */
const pages = {};

pages.overview = async (main) => {
  const step = bucketFor(state.rangeS);
  const [all, byModel, byStatus] = await Promise.all([
    api("/metrics", { ...rangeParams(), bucket: step }),
    api("/metrics", { ...rangeParams(), bucket: step, group_by: "model" }),
    api("/metrics", { ...rangeParams(), bucket: step, group_by: "status_code" }),
  ]);
  const t = all.totals;
  const p95 = all.data.length ? Math.max(...all.data.map((r) => r.latency_p95_ms)) : 0;
  main.append(
    h("h1", {}, "Overview"),
    h("div", { class: "cards" },
      card("Requests", fmt.n(t.requests)), card("Cost", fmt.usd(t.cost_usd)),
      card("Tokens", fmt.n(t.total_tokens)), card("Error rate", fmt.pct(t.error_rate)),
      card("Cache hit rate", fmt.pct(t.cache_hit_rate)), card("Cost saved by the cache", fmt.usd(t.cost_saved_usd)),
      card("Worst p95 latency", fmt.ms(p95)),
      card("Firewall blocked", fmt.n(t.firewall_blocked)), card("Firewall flagged", fmt.n(t.firewall_flagged))),
    h("div", { class: "grid2" },
      chart("Requests by model", byField(byModel.data, "requests"), { kind: "bar", step: all.bucket_s }),
      chart("Cost (USD) by model", byField(byModel.data, "cost_usd"), { kind: "bar", format: (v) => "$" + (v < 1 ? v.toFixed(3) : fmt.c(v)), step: all.bucket_s }),
      chart("Latency percentiles", ["p50", "p90", "p95", "p99"].map((q, i) => ({ name: q, color: COLORS[i], points: all.data.map((r) => [r.t, r[`latency_${q}_ms`]]) })), { format: fmt.ms, step: all.bucket_s }),
      chart("Requests by status", byField(byStatus.data, "requests"), { kind: "bar", step: all.bucket_s }),
      chart("Error rate and cache hit rate", [
        { name: "error rate", color: "#c92a2a", points: all.data.map((r) => [r.t, r.error_rate]) },
        { name: "cache hit rate", color: "#1098ad", points: all.data.map((r) => [r.t, r.cache_hit_rate]) },
      ], { format: fmt.pct, step: all.bucket_s }),
      chart("Tokens", [
        { name: "prompt", points: all.data.map((r) => [r.t, r.prompt_tokens]) },
        { name: "completion", points: all.data.map((r) => [r.t, r.completion_tokens]) },
      ], { kind: "bar", step: all.bucket_s })),
  );
};

function card(label, value) {
  return h("div", { class: "card" }, h("div", { class: "label" }, label), h("div", { class: "value" }, value));
}

const REQUEST_FILTERS = [
  ["model", "Model", "select"], ["provider", "Provider", "select"], ["status", "Status code", "text", "e.g. 429 or 500,502"],
  ["error_code", "Error code", "text", "e.g. PROVIDER_ERROR"], ["cache_status", "Cache", "choice", ["", "hit", "miss", "bypass", "disabled"]],
  ["cache_tier", "Cache tier", "choice", ["", "exact", "semantic", "advanced"]],
  ["firewall_verdict", "Firewall", "choice", ["", "block", "flag", "pass", "error", "skipped"]],
  ["firewall_source", "Verdict source", "choice", ["", "cache", "classifier"]], ["user_id", "User", "text"],
  ["session_id", "Session", "text"], ["property", "Property", "text", "key:value"],
  ["min_latency_ms", "Min latency (ms)", "number"], ["max_latency_ms", "Max latency (ms)", "number"],
  ["min_cost_usd", "Min cost ($)", "number"], ["max_cost_usd", "Max cost ($)", "number"],
  ["q", "Search bodies", "text", "text in prompt or answer"],
  ["sort", "Sort by", "choice", ["time", "latency", "cost", "tokens"]], ["order", "Order", "choice", ["desc", "asc"]],
];

function splitList(name, value) {
  if (!value) return undefined;
  return ["status", "model", "provider", "error_code", "property"].includes(name) ? value.split(",").map((v) => v.trim()).filter(Boolean) : value;
}

pages.requests = async (main, query) => {
  const options = await api("/metrics", { ...rangeParams(), bucket: "1d", group_by: "model" }).then(
    async (m) => ({ model: [...new Set(m.data.map((r) => r.series))].sort(),
      provider: [...new Set((await api("/metrics", { ...rangeParams(), bucket: "1d", group_by: "provider" })).data.map((r) => r.series))].filter(Boolean).sort() }));
  const form = h("form", { class: "filters", id: "request-filters" });
  for (const [name, label, kind, extra] of REQUEST_FILTERS) {
    let input;
    if (kind === "select" || kind === "choice") {
      const values = kind === "select" ? ["", ...options[name]] : extra;
      input = h("select", { name }, values.map((v) => h("option", { value: v, selected: (query.get(name) || "") === v }, v || "any")));
    } else {
      input = h("input", { name, type: kind === "number" ? "number" : "text", step: "any", placeholder: extra || "", value: query.get(name) || "" });
    }
    form.append(h("label", {}, label, input));
  }
  form.append(h("div", { class: "actions" }, h("button", { class: "btn", type: "submit" }, "Apply"),
    h("button", { class: "btn ghost", type: "button", onclick: () => (location.hash = "#/requests") }, "Clear")));
  const exportBar = h("div", { class: "export", id: "export" }, h("span", { class: "muted" }, "Export the filtered list:"),
    ["csv", "jsonl"].map((format) => h("button", { class: "btn ghost", type: "button", id: "export-" + format,
      onclick: () => download("/console/api/requests/export", { ...params, format }, "requests." + format).catch((err) => banner("Export failed: " + err.message)) },
    format.toUpperCase())),
    h("span", { class: "muted" }, "(at most 10,000 rows, in the list's order)"));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const q = new URLSearchParams();
    for (const [k, v] of new FormData(form).entries()) if (v) q.set(k, v);
    location.hash = "#/requests?" + q.toString();
  });
  const params = { ...rangeParams() };
  for (const [name] of REQUEST_FILTERS) params[name] = splitList(name, query.get(name));
  const tbody = h("tbody");
  const table = h("table", { id: "requests-table" },
    h("thead", {}, h("tr", {}, ["Time", "Status", "Model", "Provider", "Latency", "Tokens", "Cost", "Cache", "User", "Prompt"].map((c, i) => h("th", { class: [4, 5, 6].includes(i) ? "num" : "" }, c)))), tbody);
  const more = h("div", { class: "more" });
  main.append(h("h1", {}, "Requests"), form, exportBar, table, more);
  let cursor = null, shown = 0;
  async function load() {
    const page = await api("/requests", { ...params, limit: 50, cursor });
    for (const r of page.data) tbody.append(requestRow(r));
    shown += page.data.length;
    cursor = page.next_cursor;
    more.replaceChildren(h("span", { class: "muted", id: "shown" }, `${shown} request${shown === 1 ? "" : "s"}`),
      cursor ? h("button", { class: "btn ghost", onclick: load }, "Load more") : h("span", { class: "muted" }, "· end of results"));
    if (!shown) table.replaceWith(h("div", { class: "empty", id: "requests-table" }, "No requests match these filters in this range."));
  }
  await load();
  if (query.get("open")) await openRequest(query.get("open"));
};

/* A file from the gateway (the key goes in a header, so not a plain link). */
async function download(path, params, fallbackName) {
  const res = await fetch(urlFor(path, params), { headers: { Authorization: "Bearer " + state.key } });
  if (!res.ok) {
    const data = await res.json().catch(() => ({}));
    throw new Error((data.error && data.error.message) || res.statusText);
  }
  const blob = await res.blob();
  const name = ((res.headers.get("content-disposition") || "").match(/filename="([^"]+)"/) || [])[1] || fallbackName;
  const a = h("a", { href: URL.createObjectURL(blob), download: name });
  document.body.append(a);
  a.click();
  a.remove();
}

function preview(body) {
  try {
    const msgs = JSON.parse(body).messages || [];
    const last = msgs[msgs.length - 1];
    return typeof last?.content === "string" ? last.content : body;
  } catch { return body; }
}

/* ``back``: set for rows inside a panel (a session, a user), so the detail can return there. */
function requestRow(r, back) {
  const tr = h("tr", { "data-id": r.request_id, onclick: () => { document.querySelectorAll("tbody tr.selected").forEach((x) => x.classList.remove("selected")); tr.classList.add("selected"); openRequest(r.request_id, r.created_at_ms, back); } },
    h("td", {}, fmt.time(r.created_at_ms)), h("td", {}, statusBadge(r.status_code), r.error_code ? h("span", { class: "muted" }, " " + r.error_code) : null,
      r.firewall_verdict === "block" || r.firewall_verdict === "flag" ? h("span", { class: "badge firewall" }, " firewall " + r.firewall_verdict) : null),
    h("td", {}, r.model || "—"), h("td", {}, r.provider || "—"), h("td", { class: "num" }, fmt.ms(r.latency_ms)),
    h("td", { class: "num" }, fmt.n(r.total_tokens)), h("td", { class: "num" }, fmt.usd(r.cost_usd)),
    h("td", {}, r.cache_status === "hit" ? h("span", { class: "badge hit" }, "hit " + r.cache_tier) : r.cache_status || "—"),
    h("td", { class: "user" }, r.user_id || "—"), h("td", { class: "preview" }, preview(r.preview)));
  return tr;
}

function pretty(text) {
  if (!text) return "(empty)";
  try { return JSON.stringify(JSON.parse(text), null, 2); } catch { return text; }
}

function bodyText(r, body, side) {
  if (body) return pretty(body);
  if (!r.bodies_redacted) return "(empty)";
  const omitted = (r.request_headers || {})["floopy-omit-" + side] === "true";
  return omitted ? `(not stored: floopy-omit-${side})` : "(not stored: the key's body logging is off)";
}

function headerList(headers, id) {
  const entries = Object.entries(headers || {}).sort(([a], [b]) => a.localeCompare(b));
  if (!entries.length) return h("p", { class: "muted", id }, "None recorded.");
  return h("dl", { class: "kv headers", id }, entries.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

function kv(pairs) {
  return h("dl", { class: "kv" }, pairs.filter(([, v]) => v !== undefined && v !== null && v !== "").flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

function barRows(items, total, cls) {
  return h("div", { class: "bars" }, items.map(([name, offset, dur, status]) => h("div", { class: "row" },
    h("span", {}, name),
    h("div", { class: "track" }, h("div", { class: `fill ${status === "error" ? "error" : cls || ""}`, style: `left:${(100 * offset) / total}%;width:${Math.max(0.4, (100 * dur) / total)}%` })),
    h("span", { class: "muted" }, fmt.ms(dur)))));
}

async function openRequest(id, at, back) {
  const panel = $("#panel"), body = $("#panel-body");
  panel.hidden = false;
  body.replaceChildren(h("p", { class: "muted" }, "Loading…"));
  const { request: r, spans, breaker_events: events } = await api("/requests/" + encodeURIComponent(id), { at });
  const stages = Object.entries(r.stage_latency_ms || {});
  const stageTotal = Math.max(r.latency_ms, stages.reduce((a, [, v]) => a + v, 0), 1);
  const spanEnd = Math.max(1, ...spans.map((x) => x.start_offset_ms + x.duration_ms));
  const cached = Math.min(r.cached_prompt_tokens || 0, r.prompt_tokens);
  const tokTotal = Math.max(1, r.total_tokens);
  body.replaceChildren(
    ...(back ? [h("button", { class: "btn ghost back", id: "panel-back", onclick: back }, "← back")] : []),
    h("h2", { id: "detail-title" }, statusBadge(r.status_code), " ", r.model_used || r.model_requested || "(no model)", h("span", { class: "muted" }, " · " + (r.provider || "no provider"))),
    h("div", { class: "panel-actions" }, h("button", { class: "btn", id: "open-in-playground", disabled: !r.request_body,
      title: r.request_body ? "Load this request's body into the Playground" : "The request body was not stored",
      onclick: () => (location.hash = `#/playground?request=${encodeURIComponent(r.request_id)}&at=${r.created_at_ms}`) }, "Open in Playground")),
    kv([["Request id", r.request_id], ["Time", fmt.time(r.created_at_ms)], ["Error", r.error_code ? `${r.error_code}: ${r.error_message}` : ""],
      ["Latency", fmt.ms(r.latency_ms)], ["Time to first token", r.stream ? fmt.ms(r.time_to_first_token_ms) : ""],
      ["Cost", fmt.usd(r.cost_usd)], ["Cache", cacheText(r)],
      ["User", r.user_id], ["Session", r.session_id ? `${r.session_id} — ${r.session_name} ${r.session_path}` : ""],
      ["API key", r.api_key_id], ["Providers tried", (r.providers_tried || []).join(" → ")], ["Retries", r.retries || ""],
      ["Firewall", r.firewall_verdict ? `${r.firewall_verdict} (score ${r.firewall_score === null ? "—" : Number(r.firewall_score).toFixed(3)}, ${r.firewall_verdict_source || "no verdict"}${r.firewall_backend ? " via " + r.firewall_backend : ""} ${r.firewall_model_ref}${(r.firewall_categories || []).length ? ", " + r.firewall_categories.join(", ") : ""}${r.firewall_reason ? "; " + r.firewall_reason : ""})` : ""],
      ["Properties", Object.entries(r.properties || {}).map(([k, v]) => `${k}=${v}`).join("  ")]]),
    h("h3", {}, "Tokens"),
    h("div", { class: "tokens", id: "token-bar" },
      h("span", { style: `width:${(100 * cached) / tokTotal}%;background:#74c0fc`, title: "cached prompt" }),
      h("span", { style: `width:${(100 * (r.prompt_tokens - cached)) / tokTotal}%;background:#3b5bdb`, title: "prompt" }),
      h("span", { style: `width:${(100 * r.completion_tokens) / tokTotal}%;background:#e8590c`, title: "completion" })),
    h("div", { class: "legend" }, h("span", {}, h("i", { style: "background:#3b5bdb" }), `prompt ${fmt.n(r.prompt_tokens)}${cached ? ` (${fmt.n(cached)} cached)` : ""}`),
      h("span", {}, h("i", { style: "background:#e8590c" }), `completion ${fmt.n(r.completion_tokens)}`), h("span", {}, `total ${fmt.n(r.total_tokens)}${r.tokens_estimated ? " (estimated)" : ""}`)),
    h("h3", {}, "Latency by stage"),
    barRows(stages.reduce((acc, [name, v]) => { const off = acc.length ? acc[acc.length - 1][1] + acc[acc.length - 1][2] : 0; acc.push([name, off, v]); return acc; }, []), stageTotal),
    h("h3", {}, "Trace"),
    spans.length ? h("div", { id: "trace" }, barRows(spans.map((x) => [x.name, x.start_offset_ms, x.duration_ms, x.status]), spanEnd, "")) : h("p", { class: "muted" }, "No spans recorded."),
    h("h3", {}, "Request"), h("pre", { id: "request-body" }, bodyText(r, r.request_body, "request")),
    h("h3", {}, "Response"), h("pre", { id: "response-body" }, bodyText(r, r.response_body, "response")),
    h("h3", {}, "Request headers"), headerList(r.request_headers, "request-headers"),
    h("h3", {}, "Response headers"), headerList(r.response_headers, "response-headers"),
    events.length ? [h("h3", {}, "Circuit breaker events"), h("table", {}, h("tbody", {}, events.map((e) => h("tr", {}, h("td", {}, fmt.time(e.created_at_ms)), h("td", {}, e.provider), h("td", {}, `${e.from_state} → ${e.to_state}`), h("td", {}, e.reason)))))] : null,
  );
}

pages.sessions = async (main) => {
  const data = await api("/sessions", { ...rangeParams(), limit: 100 });
  main.append(h("h1", {}, "Sessions"));
  if (!data.data.length) return main.append(h("div", { class: "empty" }, "No sessions in this range."));
  main.append(h("table", { id: "sessions-table" },
    h("thead", {}, h("tr", {}, ["Session", "Name", "Path", "Requests", "Errors", "Tokens", "Cost", "Last request", "Duration"].map((c, i) => h("th", { class: i >= 3 && i <= 6 ? "num" : "" }, c)))),
    h("tbody", {}, data.data.map((x) => h("tr", { "data-id": x.session_id, onclick: () => openSession(x.session_id) },
      h("td", {}, x.session_id), h("td", {}, x.name), h("td", { class: "muted" }, x.path), h("td", { class: "num" }, fmt.n(x.requests)),
      h("td", { class: "num" }, fmt.n(x.errors)), h("td", { class: "num" }, fmt.n(x.total_tokens)), h("td", { class: "num" }, fmt.usd(x.cost_usd)),
      h("td", {}, fmt.time(x.last_ms)), h("td", {}, fmt.dur(x.duration_ms)))))));
};

async function openSession(id) {
  $("#panel").hidden = false;
  const { session: x, requests } = await api("/sessions/" + encodeURIComponent(id));
  const tbody = h("tbody", {}, requests.map((r) => requestRow(r, () => openSession(id))));
  $("#panel-body").replaceChildren(h("h2", { id: "detail-title" }, x.name || x.session_id),
    kv([["Session", x.session_id], ["Path", x.path], ["Requests", fmt.n(x.requests)], ["Cost", fmt.usd(x.cost_usd)], ["Tokens", fmt.n(x.total_tokens)],
      ["Started", fmt.time(x.first_ms)], ["Duration", fmt.dur(x.duration_ms)]]),
    h("h3", {}, "Requests in order (click one for its detail)"), h("table", {}, tbody));
}

pages.users = async (main) => {
  const data = await api("/users", { ...rangeParams(), limit: 100, sort: "cost" });
  main.append(h("h1", {}, "Users"));
  if (!data.data.length) return main.append(h("div", { class: "empty" }, "No users in this range."));
  main.append(h("table", { id: "users-table" },
    h("thead", {}, h("tr", {}, ["User", "Requests", "Errors", "Tokens", "Cost", "Saved by cache", "p95 latency", "Last seen"].map((c, i) => h("th", { class: i && i < 7 ? "num" : "" }, c)))),
    h("tbody", {}, data.data.map((u) => h("tr", { "data-id": u.user_id, onclick: () => openUser(u.user_id) },
      h("td", {}, u.user_id), h("td", { class: "num" }, fmt.n(u.requests)), h("td", { class: "num" }, fmt.n(u.errors)),
      h("td", { class: "num" }, fmt.n(u.total_tokens)), h("td", { class: "num" }, fmt.usd(u.cost_usd)),
      h("td", { class: "num" }, fmt.usd(u.cost_saved_usd)), h("td", { class: "num" }, fmt.ms(u.latency_p95_ms)),
      h("td", {}, fmt.time(u.last_seen * 1000)))))));
};

async function openUser(id) {
  $("#panel").hidden = false;
  const step = bucketFor(state.rangeS);
  const u = await api("/users/" + encodeURIComponent(id), { ...rangeParams(), bucket: step });
  $("#panel-body").replaceChildren(h("h2", { id: "detail-title" }, "User " + u.user_id),
    chart("Requests (ok and errors)", [{ name: "ok", points: u.series.map((r) => [r.t, r.requests - r.errors]) }, { name: "errors", color: "#c92a2a", points: u.series.map((r) => [r.t, r.errors]) }], { kind: "bar", step: u.bucket_s }),
    chart("Cost (USD)", [{ name: "cost", points: u.series.map((r) => [r.t, r.cost_usd]) }], { format: (v) => "$" + v.toFixed(3), step: u.bucket_s }),
    h("h3", {}, "Latest requests"), h("table", {}, h("tbody", {}, u.recent.map((r) => requestRow(r, () => openUser(id))))));
}

pages.properties = async (main, query) => {
  const keys = await api("/properties", rangeParams());
  main.append(h("h1", {}, "Properties"));
  if (!keys.data.length) return main.append(h("div", { class: "empty" }, "No custom properties in this range. Send floopy-property-<name> headers."));
  const key = query.get("key") || keys.data[0].property_key;
  const list = h("div", { class: "list", id: "property-keys" }, keys.data.map((k) => h("a", { href: "#/properties?key=" + encodeURIComponent(k.property_key), class: k.property_key === key ? "active" : "" },
    h("span", {}, k.property_key), h("span", { class: "muted" }, `${k.values} values · ${fmt.n(k.requests)} req`))));
  const step = bucketFor(state.rangeS);
  const [values, series] = await Promise.all([api("/properties/" + encodeURIComponent(key), rangeParams()),
    api(`/properties/${encodeURIComponent(key)}/series`, { ...rangeParams(), bucket: step })]);
  const right = h("div", {},
    h("div", { class: "grid2", style: "margin-top:0" },
      chart(`Cost per ${key} value`, byField(series.data, "cost_usd", "property_value"), { kind: "bar", format: (v) => "$" + v.toFixed(3), step: series.bucket_s }),
      chart(`Requests per ${key} value`, byField(series.data, "requests", "property_value"), { kind: "bar", step: series.bucket_s })),
    h("h2", {}, `Values of ${key}`),
    h("table", { id: "property-values" }, h("thead", {}, h("tr", {}, ["Value", "Requests", "Cost", "Saved by cache", "Tokens", "Errors", "p50", "p95"].map((c, i) => h("th", { class: i ? "num" : "" }, c)))),
      h("tbody", {}, values.data.map((v) => h("tr", { onclick: () => (location.hash = `#/requests?property=${encodeURIComponent(key + ":" + v.property_value)}`) },
        h("td", {}, v.property_value), h("td", { class: "num" }, fmt.n(v.requests)), h("td", { class: "num" }, fmt.usd(v.cost_usd)),
        h("td", { class: "num" }, fmt.usd(v.cost_saved_usd)), h("td", { class: "num" }, fmt.n(v.total_tokens)),
        h("td", { class: "num" }, fmt.n(v.errors)), h("td", { class: "num" }, fmt.ms(v.latency_p50_ms)), h("td", { class: "num" }, fmt.ms(v.latency_p95_ms)))))));
  main.append(h("div", { class: "layout2" }, list, right));
};

/* ---------- router ---------- */
async function route() {
  const [path, qs] = (location.hash.replace(/^#\/?/, "") || "overview").split("?");
  const name = pages[path] ? path : "overview";
  const query = new URLSearchParams(qs || "");
  document.querySelectorAll("#nav a").forEach((a) => a.classList.toggle("active", a.dataset.page === name));
  const main = $("#main");
  main.replaceChildren();
  main.dataset.page = name;
  main.dataset.ready = "0";
  $("#panel").hidden = true;
  if (!state.key) {
    banner("Enter an API key with the read permission (top right) to see your organisation's data.");
    main.dataset.ready = "1";
    return;
  }
  try {
    banner("");
    await pages[name](main, query);
  } catch (err) {
    banner(err.status === 401 || err.status === 403 ? `This key cannot read: ${err.message}` : `Could not load: ${err.message}`);
  } finally {
    main.dataset.ready = "1";
  }
}

function init() {
  localStorage.removeItem(KEY_STORE);  /* where earlier versions kept it, for every later visitor */
  const params = new URLSearchParams(location.search);
  const fromUrl = params.get("key");
  if (fromUrl !== null) {
    /* a key in the URL leaks into history and logs: take it out at once, keep it for this tab */
    params.delete("key");
    const rest = params.toString();
    history.replaceState(null, "", location.pathname + (rest ? "?" + rest : "") + location.hash);
    sessionStorage.setItem(KEY_STORE, fromUrl);
    state.key = fromUrl;
  }
  $("#apikey").value = state.key;
  $("#range").value = String(state.rangeS);
  $("#keyform").addEventListener("submit", (ev) => {
    ev.preventDefault();
    state.key = $("#apikey").value.trim();
    sessionStorage.setItem(KEY_STORE, state.key);
    route();
  });
  $("#range").addEventListener("change", () => {
    state.rangeS = Number($("#range").value);
    localStorage.setItem("floopy_console_range", String(state.rangeS));
    route();
  });
  $("#panel-close").addEventListener("click", () => ($("#panel").hidden = true));
  document.addEventListener("keydown", (ev) => { if (ev.key === "Escape") $("#panel").hidden = true; });
  window.addEventListener("hashchange", route);
  route();
}

/* After every page script (playground.js, settings.js) has added its pages; no inline script,
   so a strict Content-Security-Policy holds. */
document.addEventListener("DOMContentLoaded", init);
