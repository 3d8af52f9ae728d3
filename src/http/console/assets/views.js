// The views that read the existing API: Overview (/v1/status, /metrics),
// Errors (/v1/errors), Routing (/v1/routes), ACLs (/v1/acls) and Edge
// (/api/v1.0 management reads).

import { el, show, table, text, facts, duration, link } from "./dom.js";
import { lineChart, parseMetrics, sum } from "./chart.js";
import { api, params, go } from "./api.js";

let timers = [];

/** Stops the refresh loops of the view being left. */
export function stopTimers() {
  for (const t of timers) clearInterval(t);
  timers = [];
}

function every(ms, fn) {
  timers.push(setInterval(fn, ms));
}

const REFRESH_MS = 2000;
const WINDOW = 90; // points kept per live chart (3 minutes at 2 s)

// --- Overview ----------------------------------------------------------------

export async function overview(root, current) {
  const [status, metrics] = await Promise.all([api("/v1/status"), api("/metrics", "text")]);
  const cards = el("div", { class: "cards", id: "cards" });
  const feeds = el("div", { id: "feeds" });
  const cache = el("div", { id: "cache" });
  const charts = el("div", { class: "charts", id: "charts" });
  show(root, el("h2", {}, "Overview"), cards, el("h3", {}, "Live"), charts,
    el("h3", {}, "Feeds"), feeds, el("h3", {}, "Cache"), cache);
  const live = { rps: [], latency: [], last: null };
  const draw = (st, text_) => {
    const samples = parseMetrics(text_);
    renderCards(cards, st, samples);
    renderFeeds(feeds, st.feeds, samples);
    renderCache(cache, st.cache);
    sampleLive(live, samples);
    show(charts,
      el("figure", {}, lineChart([{ name: "requests/s (both listeners)", color: "#2a5bd7", points: live.rps }], { unit: "/s", id: "chart-rps" }),
        el("figcaption", {}, "Requests per second, from caldera_http_requests_total")),
      el("figure", {}, lineChart([{ name: "edit → served, mean ms", color: "#b54708", points: live.latency }], { unit: "ms", id: "chart-latency" }),
        el("figcaption", {}, "Mean time from a source edit to its cache document being served, from caldera_change_to_cache_seconds")));
  };
  draw(status, metrics);
  every(REFRESH_MS, async () => {
    if (!current()) return;
    try {
      const [st, m] = await Promise.all([api("/v1/status"), api("/metrics", "text")]);
      if (current()) draw(st, m);
    } catch { /* the next tick retries */ }
  });
}

function renderCards(node, st, samples) {
  const pending = sum(samples, "caldera_feed_pending");
  const withErrors = Object.values(st.cache || {}).reduce((n, c) => n + (c.with_errors || 0), 0);
  const card = (label, value, cls = "") => el("div", { class: "card" }, el("div", { class: "muted" }, label), el("div", { class: `n ${cls}` }, value));
  show(node,
    card("ready", st.ready ? "yes" : "no", st.ready ? "ok" : "bad"),
    card("node", st.node),
    card("version", st.version),
    card("uptime", duration(st.uptime_seconds)),
    card("builds", st.building ? "this instance" : "no (replica)"),
    card("build queue (changes pending)", String(pending), pending ? "warn" : "ok"),
    card("documents with errors", String(withErrors), withErrors ? "bad" : "ok"),
    st.reasons && st.reasons.length ? el("div", { class: "card bad" }, st.reasons.join("; ")) : null);
}

function renderFeeds(node, feeds, samples) {
  const rows = (feeds || []).map((f) => {
    const pending = sum(samples, "caldera_feed_pending", { db: f.db });
    const lag = sum(samples, "caldera_feed_lag_seconds", { db: f.db });
    const caught = f.loaded && pending === 0 && f.state !== "failing";
    return [f.source, f.db, text(f.state), el("span", { class: caught ? "ok" : "warn" }, caught ? "caught up" : "behind"),
      String(pending), `${lag.toFixed(1)} s`, String(f.changes), String(f.reconnects),
      f.last_error ? el("span", { class: "bad" }, f.last_error) : el("span", { class: "muted" }, "none")];
  });
  show(node, table(["source", "database", "state", "", "seq behind", "lag", "changes", "reconnects", "last error"], rows, { id: "feeds-table" }));
}

function renderCache(node, cache) {
  const rows = Object.entries(cache || {}).map(([domain, c]) =>
    [domain, String(c.documents), `${(c.bytes / 1024).toFixed(1)} kB`, String(c.with_errors), String(c.stale)]);
  show(node, table(["domain", "documents", "bytes", "with errors", "stale"], rows, { id: "cache-table" }));
}

function sampleLive(live, samples) {
  const now = Date.now() / 1000;
  const current = {
    t: now,
    requests: sum(samples, "caldera_http_requests_total"),
    latencySum: sum(samples, "caldera_change_to_cache_seconds_sum"),
    latencyCount: sum(samples, "caldera_change_to_cache_seconds_count"),
  };
  const last = live.last;
  live.last = current;
  if (!last) return;
  const dt = current.t - last.t || 1;
  const t = Math.round(now);
  live.rps.push([t, Math.max(0, (current.requests - last.requests) / dt)]);
  const edits = current.latencyCount - last.latencyCount;
  live.latency.push([t, edits > 0 ? ((current.latencySum - last.latencySum) / edits) * 1000 : 0]);
  for (const s of [live.rps, live.latency]) while (s.length > WINDOW) s.shift();
}

// --- Errors ------------------------------------------------------------------

const PAGE = 50;

export async function errors(root) {
  const p = params();
  const query = new URLSearchParams({ limit: PAGE });
  for (const k of ["domain", "db", "cursor"]) if (p.get(k)) query.set(k, p.get(k));
  const page = await api(`/v1/errors?${query}`);
  const groups = table(["database", "domain", "documents"], page.groups.map((g) =>
    [g.db, g.domain, link(`#/errors?${new URLSearchParams({ db: g.db, domain: g.domain })}`, String(g.documents))]), { id: "error-groups" });
  const byGroup = new Map();
  for (const item of page.items) {
    for (const e of item.errors) {
      const key = `${e.db} · ${item.domain}`;
      if (!byGroup.has(key)) byGroup.set(key, []);
      byGroup.get(key).push([documentLink(item, e), e.reason, item.stale ? el("span", { class: "warn" }, "stale") : ""]);
    }
  }
  const sections = [...byGroup].map(([key, rows]) =>
    el("div", { class: "error-group" }, el("h3", {}, key), table(["document", "reason", ""], rows)));
  const filter = p.get("domain") || p.get("db") ? el("p", {}, `Filtered: ${p.get("db") || "any database"} · ${p.get("domain") || "any domain"} `, link("#/errors", "show all")) : null;
  const next = page.next ? el("button", { id: "errors-next", onclick: () => go("errors", { db: p.get("db"), domain: p.get("domain"), cursor: page.next }) }, "Next page") : null;
  show(root, el("h2", {}, "Errors"),
    el("p", { class: "muted" }, `${page.total} cache documents carry errors.`), groups, filter,
    page.items.length ? sections : el("p", { class: "ok" }, "No document has an error."),
    el("div", { class: "pager" }, next));
}

/** Where the console (or the API) shows the document an error is about. */
function documentLink(item, e) {
  const doc = e.doc || "(no document)";
  if (item.domain === "phones" && item.key.startsWith("unit:")) {
    return el("span", {}, link(`#/unit?${new URLSearchParams({ id: item.key.slice(5) })}`, doc), el("span", { class: "muted" }, ` (${item.id})`));
  }
  if (item.domain === "sysconf") {
    return el("span", {}, el("a", { href: `/v1/sysconf/${encodeURIComponent(item.key)}`, target: "_blank", rel: "noopener" }, doc));
  }
  return el("span", {}, doc, el("span", { class: "muted" }, ` (${item.id})`));
}

// --- Routing -----------------------------------------------------------------

export async function routing(root) {
  const p = params();
  const field = (name, label, placeholder) => el("label", {}, label, el("input", { name, id: `route-${name}`, value: p.get(name) || "", placeholder }));
  const result = el("div", { id: "route-result" });
  const form = el("form", { class: "inline", id: "route-form", onsubmit: (event) => {
    event.preventDefault();
    const data = Object.fromEntries(new FormData(form));
    go("routing", data);
  } }, field("domain", "SIP domain", "example.net"), field("ruleset", "ruleset (groupid)", "default"),
  field("number", "number", "33123456789"), field("host", "asking host (optional)", "sbc1.example.net"),
  el("button", { type: "submit", id: "route-submit" }, "Route"));
  show(root, el("h2", {}, "Route tester"), form, result);
  if (!p.get("domain") || !p.get("ruleset") || !p.get("number")) return;
  const path = ["domain", "ruleset", "number"].map((k) => encodeURIComponent(p.get(k))).join("/");
  const query = new URLSearchParams({ explain: "true" });
  if (p.get("host")) query.set("host", p.get("host"));
  try {
    showRoute(result, await api(`/v1/routes/${path}?${query}`));
  } catch (failure) {
    show(result, el("p", { class: "bad", id: "route-failure" }, failure.message));
  }
}

function showRoute(node, r) {
  const gateways = (r.gateways || []).map((g, i) => [String(i + 1), g.gwid, g.carrierid || "", g.address, String(g.priority), String(g.weight),
    g.local ? "yes" : "", attrsCell(g)]);
  const rejected = (r.rejected || []).map((x) => [text(x.entry), x.gwid || x.carrierid || "", x.reason]);
  show(node,
    facts([["ruleset", r.ruleset], ["rule", r.rule], ["prefix", r.prefix], ["destination", text(r.destination)], ["host", r.host || "(none)"]]),
    el("h3", {}, "Gateways, in the order a proxy tries them"),
    table(["#", "gateway", "carrier", "address", "priority", "weight", "local", "attributes (and where each came from)"], gateways, { id: "route-gateways" }),
    rejected.length ? [el("h3", {}, "Rejected entries"), table(["entry", "gateway / carrier", "reason"], rejected)] : null,
    (r.warnings || []).length ? [el("h3", {}, "Warnings"), el("ul", {}, r.warnings.map((w) => el("li", {}, text(w))))] : null);
}

/** Every attribute of a gateway with where it came from (`?explain=true`). */
function attrsCell(g) {
  const origins = g.origins || {};
  const line = (label, value, origin) => el("div", { class: "origin" }, `${label} = ${text(value)}`,
    origin ? el("span", { class: "muted" }, ` ← ${describe(origin)}`) : null);
  const attrs = Object.entries(g.attrs || {}).map(([k, v]) => line(k, v, origins[`attrs.${k}`]));
  const fields = ["response_timeout", "progress_timeout", "answer_timeout", "dialog_timeout", "weight", "priority"]
    .map((f) => line(f, g[f], origins[f]));
  return el("div", {}, attrs, fields);
}

/** An origin from the route explainer as a phrase. */
function describe(o) {
  switch (o.from) {
    case "route": return `route: ${o.rule} · destination ${text(o.destination)} · gwlist entry ${text(o.entry)}`;
    case "gateway": return `gateway ${o.doc}${o.carrier ? ` (over carrier ${o.carrier})` : ""}`;
    case "both": return `merged: ${describe(o.gateway)}, then ${describe(o.route)}`;
    case "gwlist position": return `gwlist entry ${text(o.entry)}'s position${o.local_bonus ? " + the asking host's local bonus" : ""}`;
    default: return "built-in default";
  }
}

// --- ACLs --------------------------------------------------------------------

export async function acls(root) {
  const [served, dns] = await Promise.all([api("/v1/acls"), api("/v1/acls/dns")]);
  const lists = Object.entries(served.lists || {}).map(([name, entries]) => {
    const rows = Object.entries(entries).map(([key, e]) =>
      [key, e.type || "", e.cidr || text(e.cidrs || ""), source(e), e.authorizing_id || "", e.account_id || ""]);
    return el("div", { class: "acl-list" }, el("h3", {}, `${name} (${rows.length})`),
      table(["name or address", "type", "cidr", "source", "authorizing id", "account"], rows));
  });
  const hosts = (dns.hosts || []).map((h) => [h.host, h.addresses.join(", ") || el("span", { class: "muted" }, "none"),
    `${h.ttl_secs} s`, h.asked ? `in ${h.next_lookup_secs} s` : "not yet", h.error ? el("span", { class: "bad" }, h.error) : el("span", { class: "ok" }, "ok")]);
  const errs = (served.errors || []).map((e) => [e.db || "", e.doc || "", e.reason || text(e)]);
  show(root, el("h2", {}, "ACLs"), el("p", { class: "muted" }, `Node ${served.node}${served.stale ? " (stale)" : ""}`),
    el("div", { id: "acl-lists" }, lists),
    el("h3", {}, "DNS names"),
    hosts.length ? table(["hostname", "addresses", "TTL kept", "next lookup", "last answer"], hosts, { id: "acl-dns" })
      : el("p", { class: "muted", id: "acl-dns" }, dns.building ? "No hostname in the ACLs." : "This instance does not build, so it resolves nothing."),
    el("h3", {}, "Problems"),
    errs.length ? table(["database", "document", "reason"], errs, { id: "acl-errors" }) : el("p", { class: "ok" }, "None."));
}

/** Where an entry comes from: a device, a resource, or the static `acls`. */
function source(e) {
  if (!e.authorizing_type) return `static${e.description ? ` (${e.description})` : ""}`;
  return e.authorizing_type;
}

// --- Edge ----------------------------------------------------------------------

export async function edge(root) {
  const [edges, templates] = await Promise.all([
    api("/api/v1.0/edge_telemetry_info_list/report/1?per_page=100"),
    api("/api/v1.0/config_template"),
  ]);
  const seen = edges.data || [];
  const rows = seen.map((e) => [e.edge_id, e.ip_address || "", e.template_set_version || "", e.package_name || "",
    e.downloaded ? `yes, ${e.downloaded_time}` : el("span", { class: "warn" }, "no"),
    e.consumed ? `yes, ${e.consumed_time}` : el("span", { class: e.downloaded ? "bad" : "muted" }, e.downloaded ? "not consumed" : "no")]);
  const total = edges.pagination?.total ?? seen.length;
  show(root, el("h2", {}, "Edge"),
    el("h3", {}, `Edges and their last telemetry (${total})`),
    rows.length ? table(["edge", "address", "template-set version", "package", "downloaded", "consumed"], rows, { id: "edge-table" })
      : el("p", { class: "muted", id: "edge-table" }, "No edge has reported yet."),
    el("h3", {}, "Download and consumption reports over time"), reportChart(seen),
    el("h3", {}, "Templates"),
    table(["id", "name", "description"], (templates.data || []).map((t) => [String(t.id), t.name, t.description || ""]), { id: "template-table" }));
}

/** The seed's times ("2026-12-07 16:35:50", UTC) as epoch seconds. */
function seconds(when) {
  const t = Date.parse(`${String(when).replace(" ", "T")}Z`);
  return Number.isNaN(t) ? null : t / 1000;
}

/** Reports per minute: each edge's last download and consumption. */
function reportChart(edges) {
  const perMinute = (field) => {
    const counts = new Map();
    for (const e of edges) {
      const t = e[field] ? seconds(e[field]) : null;
      if (t === null) continue;
      const minute = Math.floor(t / 60) * 60;
      counts.set(minute, (counts.get(minute) || 0) + 1);
    }
    return [...counts].sort((a, b) => a[0] - b[0]);
  };
  return lineChart([
    { name: "downloads per minute", color: "#2a5bd7", points: perMinute("downloaded_time") },
    { name: "consumptions per minute", color: "#067647", points: perMinute("consumed_time") },
  ], { id: "chart-reports" });
}
