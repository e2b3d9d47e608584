/* Playground: run a chat request through the gateway with the console's key (it needs the proxy
   permission), streamed or not, on one model or two side by side. Every run is a normal request:
   logged, tagged floopy-property-source: playground, and linked to its record. */
"use strict";

const ROLES = ["system", "user", "assistant"];

/* Models to offer: GET /v1/models when the gateway has it, else what routes and providers name. */
async function playgroundModels() {
  try {
    const listed = await call("GET", "/v1/models");
    const ids = (listed.data || []).map((m) => m.id).filter(Boolean);
    if (ids.length) return ids.sort();
  } catch { /* not there yet, or this key may not list: fall back */ }
  try {
    return (await call("GET", "/admin/routing")).models || [];
  } catch { return []; }
}

function messageRow(role, content) {
  const row = h("div", { class: "pg-message" },
    h("select", { class: "role", "aria-label": "role" }, ROLES.map((r) => h("option", { value: r, selected: r === role }, r))),
    h("textarea", { class: "content", rows: 3, "aria-label": "content" }),
    h("button", { class: "btn ghost remove", type: "button", title: "Remove this message", onclick: () => row.remove() }, "×"));
  row.querySelector("textarea").value = content;
  return row;
}

function field(label, input) {
  return h("label", {}, label, input);
}

pages.playground = async (main, query) => {
  const models = await playgroundModels();
  const list = h("datalist", { id: "pg-models" }, models.map((m) => h("option", { value: m })));
  const messages = h("div", { id: "pg-messages" }, messageRow("user", ""));
  const input = (id, attrs) => h("input", { id, ...attrs });
  const form = h("form", { class: "pg-form", id: "pg-form" },
    h("div", { class: "row2" },
      field("Model", input("pg-model", { list: "pg-models", value: models[0] || "", required: true, autocomplete: "off" })),
      field("Compare with (optional)", input("pg-model-b", { list: "pg-models", placeholder: "a second model", autocomplete: "off" }))),
    h("div", { class: "row3" },
      field("Temperature", input("pg-temperature", { type: "number", step: "0.1", min: "0", max: "2", placeholder: "default" })),
      field("Max tokens", input("pg-max-tokens", { type: "number", min: "1", placeholder: "default" })),
      h("label", { class: "check" }, input("pg-stream", { type: "checkbox", checked: true }), "Stream")),
    h("div", { class: "row2" },
      field("Prompt template (floopy-prompt-id)", input("pg-prompt-id", { placeholder: "e.g. greet or greet@2" })),
      field("Template inputs (JSON)", h("textarea", { id: "pg-inputs", rows: 2, placeholder: '{"name": "Ada"}' }))),
    h("div", { class: "switches" },
      h("label", { class: "check" }, input("pg-cache", { type: "checkbox", checked: true }), "Cache"),
      h("label", { class: "check" }, input("pg-firewall", { type: "checkbox", checked: true }), "Firewall")),
    h("h3", {}, "Messages"), messages,
    h("div", { class: "actions" },
      h("button", { class: "btn ghost", type: "button", id: "pg-add-message", onclick: () => messages.append(messageRow("user", "")) }, "+ Add message"),
      h("button", { class: "btn", type: "submit", id: "pg-run" }, "Run")));
  const results = h("div", { class: "pg-results", id: "pg-results" }, h("div", { class: "empty" }, "Write a prompt and press Run. The answer streams here."));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    runPlayground(form, results).catch((err) => banner("Playground: " + err.message));
  });
  put(main, h("h1", {}, "Playground"), list, h("div", { class: "pg" }, form, results));
  const from = query.get("request");
  if (from) await loadIntoPlayground(form, from, query.get("at"));
};

/* "Open in Playground": the stored request body (model, messages, parameters, template inputs)
   and its floopy switches, ready to edit and run again. */
async function loadIntoPlayground(form, id, at) {
  const { request: r } = await api("/requests/" + encodeURIComponent(id), { at });
  let body = {};
  try { body = JSON.parse(r.request_body || "{}"); } catch { banner("The stored request body is not JSON; loaded what could be read."); }
  const headers = r.request_headers || {};
  const set = (sel, v) => { if (v !== undefined && v !== null) form.querySelector(sel).value = String(v); };
  set("#pg-model", body.model || r.model_requested);
  set("#pg-temperature", body.temperature);
  set("#pg-max-tokens", body.max_tokens ?? body.max_completion_tokens);
  form.querySelector("#pg-stream").checked = Boolean(body.stream);
  set("#pg-prompt-id", r.prompt_id ? (r.prompt_version ? `${r.prompt_id}@${r.prompt_version}` : r.prompt_id) : headers["floopy-prompt-id"]);
  if (body.inputs) set("#pg-inputs", JSON.stringify(body.inputs));
  form.querySelector("#pg-cache").checked = headers["floopy-cache-enabled"] !== "false";
  form.querySelector("#pg-firewall").checked = headers["floopy-llm-security-enabled"] !== "false";
  const msgs = form.querySelector("#pg-messages");
  msgs.replaceChildren(...(body.messages || []).map((m) => messageRow(m.role, typeof m.content === "string" ? m.content : JSON.stringify(m.content))));
  if (!msgs.children.length) msgs.append(messageRow("user", ""));
  form.dataset.loadedFrom = id;
}

function playgroundRequest(form, model) {
  const val = (sel) => form.querySelector(sel).value.trim();
  const body = {
    model,
    messages: [...form.querySelectorAll(".pg-message")].map((row) => ({ role: row.querySelector(".role").value, content: row.querySelector(".content").value })),
    stream: form.querySelector("#pg-stream").checked,
  };
  if (val("#pg-temperature") !== "") body.temperature = Number(val("#pg-temperature"));
  if (val("#pg-max-tokens") !== "") body.max_tokens = Number(val("#pg-max-tokens"));
  if (body.stream) body.stream_options = { include_usage: true };
  const headers = { Authorization: "Bearer " + state.key, "Content-Type": "application/json", "floopy-property-source": "playground" };
  if (val("#pg-prompt-id")) {
    headers["floopy-prompt-id"] = val("#pg-prompt-id");
    body.inputs = val("#pg-inputs") ? JSON.parse(val("#pg-inputs")) : {};
  }
  if (!form.querySelector("#pg-cache").checked) headers["floopy-cache-enabled"] = "false";
  if (!form.querySelector("#pg-firewall").checked) headers["floopy-llm-security-enabled"] = "false";
  return { body, headers };
}

async function runPlayground(form, results) {
  const models = [form.querySelector("#pg-model").value.trim(), form.querySelector("#pg-model-b").value.trim()].filter(Boolean);
  if (!models.length) throw new Error("pick a model");
  const columns = models.map((model) => resultColumn(model));
  results.replaceChildren(...columns.map((c) => c.el));
  results.classList.toggle("two", models.length > 1);
  form.querySelector("#pg-run").disabled = true;
  try {
    await Promise.all(models.map((model, i) => runOne(playgroundRequest(form, model), columns[i])));
  } finally {
    form.querySelector("#pg-run").disabled = false;
  }
}

function resultColumn(model) {
  const answer = h("pre", { class: "answer" }, "");
  const stats = h("dl", { class: "kv stats" });
  const status = h("div", { class: "status muted" }, "Running…");
  const el = h("div", { class: "pg-result", "data-model": model }, h("h2", {}, model), status, answer, stats);
  return { el, answer, stats, status };
}

async function runOne({ body, headers }, col) {
  const started = performance.now();
  let firstMs = null;
  let usage = null;
  const res = await fetch("/v1/chat/completions", { method: "POST", headers, body: JSON.stringify(body) });
  const requestId = res.headers.get("floopy-request-id");
  const provider = res.headers.get("floopy-provider") || "";
  const cache = [res.headers.get("floopy-cache"), res.headers.get("floopy-cache-tier")].filter(Boolean).join(" ");
  if (!res.ok) {
    const data = await res.json().catch(() => ({}));
    col.status.replaceChildren(statusBadge(res.status), " ", (data.error && `${data.error.code}: ${data.error.message}`) || res.statusText);
    col.status.classList.add("error");
  } else if (body.stream) {
    col.status.textContent = "Streaming…";
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      const events = buffer.split("\n\n");
      buffer = events.pop();
      for (const event of events) {
        const data = event.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("");
        if (!data || data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
        if (delta && delta.content) {
          if (firstMs === null) firstMs = performance.now() - started;
          col.answer.textContent += delta.content;
        }
        if (chunk.usage) usage = chunk.usage;
      }
    }
    col.status.replaceChildren(statusBadge(res.status), " streamed");
  } else {
    const data = await res.json();
    col.answer.textContent = (data.choices && data.choices[0] && data.choices[0].message && data.choices[0].message.content) || "";
    usage = data.usage || null;
    col.status.replaceChildren(statusBadge(res.status));
  }
  const latency = performance.now() - started;
  const link = requestId ? h("a", { class: "record-link", href: "#/requests?open=" + encodeURIComponent(requestId) }, "View record") : "";
  const show = (cost, tokens) => col.stats.replaceChildren(...kv([["Provider", provider], ["Cache", cache], ["Latency", fmt.ms(latency)], ["First token", firstMs === null ? "" : fmt.ms(firstMs)],
    ["Tokens", tokens], ["Cost", cost], ["Request id", requestId || ""], ["Record", link]]).children);
  show("(waiting for the record…)", usage ? `${fmt.n(usage.prompt_tokens)} in / ${fmt.n(usage.completion_tokens)} out` : "");
  if (requestId) settleFromRecord(requestId, show);
}

/* Cost is computed by the gateway into the record; the record reaches the read API within
   about a second of the answer. */
async function settleFromRecord(requestId, show) {
  for (let i = 0; i < 20; i++) {
    await new Promise((ok) => setTimeout(ok, 750));
    try {
      const { request: r } = await api("/requests/" + encodeURIComponent(requestId));
      show(fmt.usd(r.cost_usd), `${fmt.n(r.prompt_tokens)} in / ${fmt.n(r.completion_tokens)} out${r.tokens_estimated ? " (estimated)" : ""}`);
      return;
    } catch (err) {
      if (err.status !== 404) return show("(record unavailable: " + err.message + ")", "");
    }
  }
  show("(record not found yet)", "");
}
