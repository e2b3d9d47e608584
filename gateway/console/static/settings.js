/* Settings: API keys, providers and routes, limits and plan, cache and firewall, audit log.
   Everything goes through the admin API (/admin/...) with the console's key: a read key sees
   every tab read-only, an admin key edits its own org, an operator's admin key edits every org,
   providers and routes. The server decides; the page only hides what would be refused. */
"use strict";

const SETTINGS_TABS = [["keys", "API keys"], ["routing", "Providers and routes"], ["limits", "Limits and plan (billing)"], ["cache", "Cache and firewall"], ["audit", "Audit log"]];
/* The names the docs and error hints use ("Settings > Billing", "Settings > Providers"). */
const TAB_ALIASES = { "api-keys": "keys", providers: "routing", routes: "routing", billing: "limits", plan: "limits", firewall: "cache" };
const PERMISSIONS = ["proxy", "read", "admin"];
const KEY_LIMITS = [["daily_tokens", "Tokens per day"], ["monthly_tokens", "Tokens per month"], ["daily_cost_usd", "Cost per day ($)"], ["monthly_cost_usd", "Cost per month ($)"]];
const KEY_SWITCHES = [["cache", "Cache"], ["firewall", "Firewall"], ["log_bodies", "Log bodies"]];
const enc = encodeURIComponent;
const settingsTabs = {};

pages.settings = async (main, query) => {
  const me = await call("GET", "/admin/me");
  const asked = TAB_ALIASES[query.get("tab")] || query.get("tab");
  const tab = SETTINGS_TABS.some(([t]) => t === asked) ? asked : "keys";
  const orgId = (me.operator && query.get("org")) || me.org.org_id;
  const orgQuery = orgId !== me.org.org_id ? "&org=" + enc(orgId) : "";
  const section = h("section", { id: "settings-" + tab });
  const ctx = { me, orgId, canEdit: me.can_edit, operator: me.operator, section };
  ctx.refresh = async () => { section.replaceChildren(); await settingsTabs[tab](section, ctx); };
  put(main, 
    h("h1", {}, "Settings"),
    h("div", { class: "settings-head" },
      h("span", {}, "Organisation ", h("b", { id: "settings-org" }, orgId)),
      h("span", { class: "muted" }, ` · your key ${me.key.name || me.key.key_id} (${me.key.permissions.join(", ")})${me.operator ? " · operator" : ""}`),
      me.operator ? orgSwitcher(tab, orgId) : null),
    me.can_edit ? null : h("div", { class: "note", id: "read-only" }, "This key has the read permission only: settings are shown read-only. An admin key can change them."),
    h("nav", { class: "tabs" }, SETTINGS_TABS.map(([t, label]) => h("a", { href: `#/settings?tab=${t}${orgQuery}`, class: t === tab ? "active" : "", "data-tab": t }, label))),
    section);
  await settingsTabs[tab](section, ctx);
};

function orgSwitcher(tab, orgId) {
  const input = h("input", { name: "org", value: orgId, "aria-label": "org id" });
  const form = h("form", { class: "inline" }, input, h("button", { class: "btn ghost", type: "submit" }, "Open org"));
  form.addEventListener("submit", (ev) => { ev.preventDefault(); location.hash = `#/settings?tab=${tab}&org=${enc(input.value.trim())}`; });
  return form;
}

/* A form in the side panel; ``submit`` gets the form and returns what to show after, or throws. */
function panelForm(title, fields, submitLabel, submit) {
  const error = h("div", { class: "form-error", hidden: true });
  const form = h("form", { class: "form", id: "settings-form" }, fields, error, h("div", { class: "actions" }, h("button", { class: "btn", type: "submit" }, submitLabel)));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    error.hidden = true;
    try {
      const after = await submit(form);
      if (after) $("#panel-body").replaceChildren(h("h2", { id: "detail-title" }, title), after);
      else $("#panel").hidden = true;
    } catch (err) {
      error.textContent = err.message;
      error.hidden = false;
    }
  });
  $("#panel").hidden = false;
  $("#panel-body").replaceChildren(h("h2", { id: "detail-title" }, title), form);
  return form;
}

const labelled = (label, input, hint) => h("label", {}, label, input, hint ? h("span", { class: "hint" }, hint) : null);
const numberOrNull = (v) => (String(v).trim() === "" ? null : Number(v));
const listOf = (v) => String(v).split(",").map((x) => x.trim()).filter(Boolean);
const copyButton = (text) => h("button", { class: "btn ghost", type: "button", id: "copy-secret", onclick: (ev) => {
  navigator.clipboard.writeText(text).then(() => (ev.target.textContent = "Copied"), () => (ev.target.textContent = "Select and copy it"));
} }, "Copy");

function twoStep(label, confirmLabel, action) {
  const button = h("button", { class: "btn ghost danger", type: "button", onclick: async (ev) => {
    ev.stopPropagation();
    if (button.dataset.armed !== "1") { button.dataset.armed = "1"; button.textContent = confirmLabel; return; }
    button.disabled = true;
    try { await action(); } catch (err) { banner(err.message); button.disabled = false; }
  } }, label);
  return button;
}

/* ---------- API keys ---------- */
settingsTabs.keys = async (el, ctx) => {
  const { data: keys } = await call("GET", `/admin/orgs/${enc(ctx.orgId)}/keys`);
  const limitText = (l) => KEY_LIMITS.filter(([k]) => l[k] !== null && l[k] !== undefined).map(([k, label]) => `${label.toLowerCase()}: ${k.endsWith("usd") ? fmt.usd(l[k]) : fmt.n(l[k])}`).join(", ") || "—";
  const switchText = (s) => KEY_SWITCHES.map(([k, label]) => `${label.toLowerCase()} ${s[k] ? "on" : "off"}`).join(", ");
  put(el, 
    h("div", { class: "section-head" }, h("h2", {}, "API keys"),
      ctx.canEdit ? h("button", { class: "btn", id: "create-key", onclick: () => keyForm(null, ctx) }, "Create key") : null),
    h("table", { id: "keys-table" },
      h("thead", {}, h("tr", {}, ["Name", "Key id", "Permissions", "Rate limit", "Usage limits", "Switches", "Created", "Last used", "Status", ""].map((c) => h("th", {}, c)))),
      h("tbody", {}, keys.map((k) => h("tr", { "data-id": k.key_id, class: k.revoked ? "revoked" : "" },
        h("td", {}, k.name || "—", h("span", { class: "muted" }, k.hint === "seed" ? " (config file)" : k.hint ? " …" + k.hint : "")), h("td", { class: "mono" }, k.key_id),
        h("td", {}, k.permissions.join(", ")), h("td", { class: "mono" }, k.limits.rate_limit_policy || "—"),
        h("td", { class: "wrap" }, limitText(k.limits)), h("td", { class: "wrap" }, switchText(k.switches)),
        h("td", {}, k.created_at_ms ? fmt.time(k.created_at_ms) : "—"), h("td", {}, k.last_used_ms ? fmt.time(k.last_used_ms) : "never"),
        h("td", {}, k.revoked ? h("span", { class: "badge s5" }, "revoked") : h("span", { class: "badge s2" }, "active")),
        h("td", {}, h("div", { class: "row-actions" }, ctx.canEdit && !k.revoked ? [
          h("button", { class: "btn ghost edit", type: "button", onclick: () => keyForm(k, ctx) }, "Edit"),
          twoStep("Revoke", "Confirm revoke", async () => { await call("DELETE", `/admin/keys/${enc(k.key_id)}`); await ctx.refresh(); })] : null)))))),
    h("p", { class: "muted" }, "A revoked key stops working on every gateway worker within the key cache TTL (5 s by default). Limits and switches changed here apply within the same time."));
};

function keyForm(key, ctx) {
  const k = key || { name: "", permissions: ["proxy"], limits: { rate_limit_policy: "" }, switches: { cache: true, firewall: true, log_bodies: true } };
  const fields = [
    labelled("Name", h("input", { name: "name", value: k.name })),
    h("fieldset", {}, h("legend", {}, "Permissions"), PERMISSIONS.map((p) => h("label", { class: "check" }, h("input", { type: "checkbox", name: "perm-" + p, checked: k.permissions.includes(p) }), p))),
    labelled("Rate limit", h("input", { name: "rate_limit_policy", value: k.limits.rate_limit_policy || "", placeholder: "e.g. 100;w=60 (empty: the org's only)" })),
    h("div", { class: "row2" }, KEY_LIMITS.map(([name, label]) => labelled(label, h("input", { name, type: "number", step: "any", min: "0", value: k.limits[name] ?? "", placeholder: "no limit" })))),
    h("fieldset", {}, h("legend", {}, "Switches"), KEY_SWITCHES.map(([name, label]) => h("label", { class: "check" }, h("input", { type: "checkbox", name: "sw-" + name, checked: k.switches[name] }), label))),
  ];
  return panelForm(key ? `Edit key ${key.key_id}` : "Create a key", fields, key ? "Save" : "Create key", async (form) => {
    const v = (n) => form.elements[n];
    const body = {
      name: v("name").value.trim(),
      permissions: PERMISSIONS.filter((p) => v("perm-" + p).checked),
      limits: Object.fromEntries([["rate_limit_policy", v("rate_limit_policy").value.trim()], ...KEY_LIMITS.map(([n]) => [n, numberOrNull(v(n).value)])]),
      switches: Object.fromEntries(KEY_SWITCHES.map(([n]) => [n, v("sw-" + n).checked])),
    };
    if (key) {
      await call("PATCH", `/admin/keys/${enc(key.key_id)}`, { body });
      await ctx.refresh();
      return null;
    }
    const created = await call("POST", `/admin/orgs/${enc(ctx.orgId)}/keys`, { body });
    await ctx.refresh();
    return h("div", { class: "secret-box" },
      h("p", {}, h("b", {}, "Copy this key now: it is shown this once and never again.")),
      h("div", { class: "secret-row" }, h("code", { id: "new-secret" }, created.secret), copyButton(created.secret)),
      h("p", { class: "muted" }, `Key id ${created.key.key_id} · ${created.key.permissions.join(", ")}`));
  });
}

/* ---------- providers and routes ---------- */
settingsTabs.routing = async (el, ctx) => {
  const [routing, health] = await Promise.all([call("GET", "/admin/routing"), fetch("/health/providers").then((r) => r.json()).catch(() => ({ providers: [] }))]);
  const breaker = Object.fromEntries((health.providers || []).map((p) => [p.name, p]));
  const edit = routing.editable;
  const stateBadge = (b) => (!b ? "—" : h("span", { class: `badge ${b.state === "closed" ? "s2" : b.state === "open" ? "s5" : "s4"}` }, b.state + (b.recent_failures ? ` (${b.recent_failures} failures)` : "")));
  put(el, 
    edit ? null : h("div", { class: "note" }, "Read-only: what your organisation's models route to. Providers and routes are managed by the gateway's operator."),
    h("div", { class: "section-head" }, h("h2", {}, "Providers"), edit ? h("button", { class: "btn", id: "add-provider", onclick: () => providerForm(null, ctx) }, "Add provider") : null),
    h("table", { id: "providers-table" },
      h("thead", {}, h("tr", {}, ["Name", "Kind", "Models", edit ? "Base URL" : null, edit ? "Credential" : null, "Source", "Breaker", ""].filter(Boolean).map((c) => h("th", {}, c)))),
      h("tbody", {}, routing.providers.map((p) => h("tr", { "data-id": p.name },
        h("td", {}, p.name), h("td", {}, p.kind),
        h("td", { class: "wrap" }, [...p.models, ...p.model_prefixes.map((x) => x + "*")].join(", ") || "any model"),
        edit ? h("td", { class: "mono" }, p.base_url) : null,
        edit ? h("td", {}, !p.has_credential ? "none" : p.api_key_env ? `from $${p.api_key_env}` : p.stored ? "stored, encrypted" : "in the gateway's settings") : null,
        h("td", {}, p.stored ? "stored" : "settings"), h("td", { class: "breaker" }, stateBadge(breaker[p.name])),
        h("td", {}, h("div", { class: "row-actions" }, edit ? [h("button", { class: "btn ghost edit", type: "button", onclick: () => providerForm(p, ctx) }, "Edit"),
          p.stored ? twoStep("Delete", "Confirm delete", async () => { await call("DELETE", `/admin/providers/${enc(p.name)}`); await ctx.refresh(); }) : null] : null)))))),
    h("div", { class: "section-head" }, h("h2", {}, "Routing rules"), edit ? h("button", { class: "btn", id: "add-route", onclick: () => routeForm(null, ctx) }, "Add route") : null),
    routing.routes.length ? h("table", { id: "routes-table" },
      h("thead", {}, h("tr", {}, ["Model", "Targets, in fallback order", "Source", ""].map((c) => h("th", {}, c)))),
      h("tbody", {}, routing.routes.map((r) => h("tr", { "data-id": r.model },
        h("td", { class: "mono" }, r.model), h("td", {}, r.targets.join(" → ")), h("td", {}, r.stored ? "stored" : "settings"),
        h("td", {}, h("div", { class: "row-actions" }, edit ? [h("button", { class: "btn ghost edit", type: "button", onclick: () => routeForm(r, ctx) }, "Edit"),
          r.stored ? twoStep("Delete", "Confirm delete", async () => { await call("DELETE", `/admin/routes/${enc(r.model)}`); await ctx.refresh(); }) : null] : null))))))
      : h("div", { class: "empty", id: "routes-table" }, "No routing rules: each model goes to the providers that list it, then by prefix, then to catch-all providers."),
    h("p", { class: "muted" }, "Changes take effect on every gateway worker within a few seconds, without a restart."));
};

function providerForm(p, ctx) {
  const c = p || { name: "", kind: "openai", base_url: "", models: [], model_prefixes: [], timeout_s: 120, api_key_env: "" };
  const fields = [
    labelled("Name", h("input", { name: "name", value: c.name, required: true, readonly: Boolean(p) })),
    labelled("Kind", h("select", { name: "kind" }, ["openai", "azure", "anthropic"].map((k) => h("option", { value: k, selected: k === c.kind }, k)))),
    labelled("Base URL", h("input", { name: "base_url", value: c.base_url || "", required: true, placeholder: "https://api.openai.com/v1" })),
    labelled("API key", h("input", { name: "api_key", type: "password", autocomplete: "new-password", placeholder: p ? "leave empty to keep the stored one" : "" }), "Entered once, stored encrypted, never shown again."),
    labelled("…or the NAME of an environment variable holding it", h("input", { name: "api_key_env", value: c.api_key_env || "" })),
    labelled("Models (comma-separated)", h("input", { name: "models", value: (c.models || []).join(", ") })),
    labelled("Model prefixes (comma-separated)", h("input", { name: "model_prefixes", value: (c.model_prefixes || []).join(", ") })),
    labelled("Timeout (s)", h("input", { name: "timeout_s", type: "number", step: "any", min: "1", value: c.timeout_s ?? 120 })),
  ];
  panelForm(p ? `Edit provider ${p.name}` : "Add a provider", fields, "Save provider", async (form) => {
    const v = (n) => form.elements[n].value.trim();
    const body = { kind: v("kind"), base_url: v("base_url"), models: listOf(v("models")), model_prefixes: listOf(v("model_prefixes")), timeout_s: Number(v("timeout_s")) };
    if (v("api_key")) body.api_key = v("api_key");
    if (v("api_key_env")) body.api_key_env = v("api_key_env");
    await call("PUT", `/admin/providers/${enc(v("name"))}`, { body });
    await ctx.refresh();
    return null;
  });
}

function routeForm(r, ctx) {
  const fields = [
    labelled("Model", h("input", { name: "model", value: r ? r.model : "", required: true, readonly: Boolean(r) })),
    labelled("Targets, in order", h("input", { name: "targets", value: r ? r.targets.join(", ") : "", required: true, placeholder: "primary, backup/gpt-4o-mini" }), "Each is a provider, or provider/model; the next is tried when one fails."),
  ];
  panelForm(r ? `Edit route ${r.model}` : "Add a route", fields, "Save route", async (form) => {
    const model = form.elements.model.value.trim();
    await call("PUT", `/admin/routes/${model.split("/").map(enc).join("/")}`, { body: { targets: listOf(form.elements.targets.value) } });
    await ctx.refresh();
    return null;
  });
}

/* ---------- limits and plan ---------- */
function windowText(s) {
  const units = [[86400, "day"], [3600, "hour"], [60, "minute"], [1, "second"]];
  const [size, name] = units.find(([u]) => s % u === 0);
  return s === size ? name : `${fmt.n(s / size)} ${name}s`;
}

function policyText(policy) {
  const m = /^(\d+(?:\.\d+)?);w=(\d+)/.exec(policy || "");
  return m ? `${fmt.n(Number(m[1]))} requests per ${windowText(Number(m[2]))}` : policy || "—";
}

settingsTabs.limits = async (el, ctx) => {
  const [org, usage] = await Promise.all([call("GET", `/admin/orgs/${enc(ctx.orgId)}`), call("GET", `/admin/orgs/${enc(ctx.orgId)}/usage`)]);
  const plan = org.plan;
  const quota = plan.monthly_requests;
  const used = usage.requests;
  const expired = plan.expires_at_ms !== null && plan.expires_at_ms <= Date.now();
  put(el, 
    h("h2", {}, "Plan and usage (billing)"),
    h("div", { class: "cards", id: "plan-cards" },
      card("Rate limit", policyText(org.rate_limit_policy)),
      card(`Requests in ${usage.month.slice(0, 4)}-${usage.month.slice(4)}`, quota === null ? `${fmt.n(used)} (no quota)` : `${fmt.n(used)} of ${fmt.n(quota)}`),
      card("Overage", plan.overage_allowed ? "allowed" : "not allowed"),
      card("Expires", plan.expires_at_ms === null ? "never" : fmt.time(plan.expires_at_ms) + (expired ? " (expired)" : "")),
      card("Retention", `${plan.retention_days} days`)),
    quota === null ? null : h("div", { class: "progress", title: `${fmt.pct(used / quota)} used` }, h("span", { style: `width:${Math.min(100, (100 * used) / Math.max(1, quota))}%` })),
    h("ul", { class: "explain" },
      h("li", {}, `Rate limit: every request of the org counts; past it the answer is 429 RATE_LIMIT_EXCEEDED with Retry-After.`),
      h("li", {}, quota === null ? "No monthly request quota." : `Monthly quota: after ${fmt.n(quota)} requests in a UTC month, requests get 429 MONTHLY_LIMIT_EXCEEDED${plan.overage_allowed ? " — except that overage is allowed, so they go on (and count)." : "."}`),
      h("li", {}, "Expiry: after it, every request gets 403 SUBSCRIPTION_EXPIRED until the plan is renewed."),
      h("li", {}, `Retention: requests older than ${plan.retention_days} days are deleted (the overview's rollups stay).`)),
    h("h2", {}, "Spend per key"),
    h("table", { id: "key-usage" }, h("thead", {}, h("tr", {}, ["Key id", "Tokens today", "Cost today", "Tokens this month", "Cost this month"].map((c, i) => h("th", { class: i ? "num" : "" }, c)))),
      h("tbody", {}, Object.entries(usage.keys).map(([id, u]) => h("tr", {}, h("td", { class: "mono" }, id), h("td", { class: "num" }, fmt.n(u.day_tokens)),
        h("td", { class: "num" }, fmt.usd(u.day_cost_usd)), h("td", { class: "num" }, fmt.n(u.month_tokens)), h("td", { class: "num" }, fmt.usd(u.month_cost_usd)))))),
    ctx.operator ? h("div", { class: "section-head" }, h("h2", {}, "Change the plan"), h("button", { class: "btn", id: "edit-plan", onclick: () => planForm(org, ctx) }, "Edit plan"))
      : h("p", { class: "note" }, "Renewing or changing the plan is an operator action: ask your gateway's operator."));
};

function planForm(org, ctx) {
  const p = org.plan;
  const expires = p.expires_at_ms === null ? "" : new Date(p.expires_at_ms).toISOString().slice(0, 16);
  const fields = [
    labelled("Name", h("input", { name: "name", value: org.name })),
    labelled("Rate limit", h("input", { name: "rate_limit", value: org.rate_limit_policy, required: true })),
    labelled("Monthly requests", h("input", { name: "monthly_requests", type: "number", min: "0", value: p.monthly_requests ?? "", placeholder: "no quota" })),
    h("label", { class: "check" }, h("input", { type: "checkbox", name: "overage_allowed", checked: p.overage_allowed }), "Overage allowed"),
    labelled("Retention (days)", h("input", { name: "retention_days", type: "number", min: "1", value: p.retention_days })),
    labelled("Expires at (UTC)", h("input", { name: "expires_at", type: "datetime-local", value: expires }), "Empty: never."),
  ];
  panelForm(`Plan of ${org.org_id}`, fields, "Save plan", async (form) => {
    const e = form.elements;
    await call("PUT", `/admin/orgs/${enc(org.org_id)}`, { body: {
      name: e.name.value.trim(), rate_limit: e.rate_limit.value.trim(),
      plan: { monthly_requests: numberOrNull(e.monthly_requests.value), overage_allowed: e.overage_allowed.checked,
        retention_days: Number(e.retention_days.value), expires_at: e.expires_at.value ? e.expires_at.value + ":00Z" : null } } });
    await ctx.refresh();
    return null;
  });
}

/* ---------- cache and firewall: whatever fields the org's objects carry ---------- */
settingsTabs.cache = async (el, ctx) => {
  const org = await call("GET", `/admin/orgs/${enc(ctx.orgId)}`);
  for (const [name, title] of [["cache", "Cache"], ["firewall", "Firewall"]]) {
    const box = h("div", { class: "card settings-card", id: "section-" + name }, h("h2", {}, title));
    const value = org[name];
    if (value === undefined || value === null) put(box, h("p", { class: "muted not-configured" }, `${title} settings are not configured yet on this gateway.`));
    else put(box, objectForm(value, ctx.canEdit, async (next) => {
      await call("PUT", `/admin/orgs/${enc(ctx.orgId)}/${name}`, { body: next });
      await ctx.refresh();
    }));
    put(el, box);
  }
};

const LABEL_WORDS = { ttl: "TTL", s: "(s)", ms: "(ms)", usd: "(USD)", id: "id" };
const fieldLabel = (name) => {
  const text = name.split("_").map((w) => LABEL_WORDS[w] || w).join(" ");
  return text.charAt(0).toUpperCase() + text.slice(1);
};

/* A form for a flat-ish JSON object: booleans as checkboxes, numbers and text as inputs, lists
   of text comma-separated, anything else as JSON. Saving sends the same shape back. */
function objectForm(obj, canEdit, save) {
  const kinds = {};
  const error = h("div", { class: "form-error", hidden: true });
  const rows = Object.entries(obj).map(([k, v]) => {
    let input;
    if (typeof v === "boolean") { kinds[k] = "bool"; input = h("input", { type: "checkbox", name: k, checked: v, disabled: !canEdit }); return h("label", { class: "check" }, input, fieldLabel(k)); }
    if (typeof v === "number") { kinds[k] = "number"; input = h("input", { type: "number", step: "any", name: k, value: v, disabled: !canEdit }); }
    else if (typeof v === "string") { kinds[k] = "text"; input = h("input", { name: k, value: v, placeholder: "empty: the gateway's default", disabled: !canEdit }); }
    else if (v === null) { kinds[k] = "nullable"; input = h("input", { name: k, value: "", placeholder: "not set", disabled: !canEdit }); }
    else if (Array.isArray(v) && v.every((x) => typeof x === "string")) { kinds[k] = "list"; input = h("input", { name: k, value: v.join(", "), disabled: !canEdit }); }
    else { kinds[k] = "json"; input = h("textarea", { name: k, rows: 3, disabled: !canEdit }); input.value = JSON.stringify(v, null, 1); }
    return labelled(fieldLabel(k), input);
  });
  const form = h("form", { class: "form object-form" }, h("div", { class: "row2" }, rows), error,
    canEdit ? h("div", { class: "actions" }, h("button", { class: "btn", type: "submit" }, "Save")) : null);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    error.hidden = true;
    try {
      const next = {};
      for (const [k, kind] of Object.entries(kinds)) {
        const el = form.elements[k];
        const raw = el.value.trim();
        next[k] = kind === "bool" ? el.checked : kind === "number" ? Number(raw) : kind === "list" ? listOf(raw)
          : kind === "json" ? JSON.parse(raw) : kind === "nullable" ? (raw === "" ? null : Number.isNaN(Number(raw)) ? raw : Number(raw)) : raw;
      }
      await save(next);
    } catch (err) { error.textContent = err.message; error.hidden = false; }
  });
  return form;
}

/* ---------- audit log ---------- */
function flatten(value, prefix, out) {
  if (value && typeof value === "object" && !Array.isArray(value)) {
    for (const [k, v] of Object.entries(value)) flatten(v, prefix ? `${prefix}.${k}` : k, out);
  } else out[prefix || "value"] = value;
  return out;
}

function changes(before, after) {
  if (before === null || before === undefined) return after === null || after === undefined ? [] : ["created"];
  if (after === null || after === undefined) return ["deleted"];
  const a = flatten(before, "", {}), b = flatten(after, "", {});
  const show = (v) => (v === undefined ? "∅" : JSON.stringify(v));
  return [...new Set([...Object.keys(a), ...Object.keys(b)])].filter((k) => JSON.stringify(a[k]) !== JSON.stringify(b[k])).map((k) => `${k}: ${show(a[k])} → ${show(b[k])}`);
}

function auditTable(id, data) {
  if (!data.length) return h("div", { class: "empty", id }, "No settings changes yet.");
  return h("table", { id },
    h("thead", {}, h("tr", {}, ["When", "Who", "Action", "Target", "Change"].map((c) => h("th", {}, c)))),
    h("tbody", {}, data.map((e) => h("tr", { "data-action": e.action },
      h("td", {}, fmt.time(e.at_ms)), h("td", {}, `${e.actor.kind === "cli" ? "floopy-admin" : "key"} ${e.actor.name || e.actor.id}`, e.actor.org_id ? h("span", { class: "muted" }, ` (${e.actor.org_id})`) : null),
      h("td", {}, e.action), h("td", { class: "mono" }, e.target),
      h("td", { class: "change" }, changes(e.before, e.after).map((line) => h("div", {}, line)))))));
}

settingsTabs.audit = async (el, ctx) => {
  const { data } = await call("GET", `/admin/orgs/${enc(ctx.orgId)}/audit`, { params: { limit: 200 } });
  put(el, h("h2", {}, "Audit log"), h("p", { class: "muted" }, "Every settings change, newest first; secrets, key hashes and provider credentials are never recorded."),
    auditTable("audit-table", data));
  if (!ctx.operator) return;
  const gateway = await call("GET", "/admin/audit", { params: { limit: 200 } });
  put(el, h("h2", {}, "Gateway-wide: providers and routes"), h("p", { class: "muted" }, "Including changes made with floopy-admin."), auditTable("gateway-audit-table", gateway.data));
};
