// The Phones view: unit search (server-side, paged), and a unit's merged
// configuration with "why this value", its files (secrets masked unless
// the admin reveals them) and its request log.

import { el, show, table, text, facts, link } from "./dom.js";
import { api, params, go } from "./api.js";

const PAGE = 50;

export async function search(root) {
  const p = params();
  const q = p.get("q") || "";
  const input = el("input", { name: "q", id: "unit-q", value: q, size: 40, placeholder: "MAC, name, account or id" });
  const form = el("form", { class: "inline", id: "unit-search", onsubmit: (event) => {
    event.preventDefault();
    go("phones", { q: input.value });
  } }, el("label", {}, "Search units", input), el("button", { type: "submit" }, "Search"));
  const query = new URLSearchParams({ q, limit: PAGE });
  if (p.get("cursor")) query.set("cursor", p.get("cursor"));
  const page = await api(`/v1/units?${query}`);
  const rows = page.units.map((u) => [
    link(`#/unit?${new URLSearchParams({ id: u.id })}`, u.id), u.name || "", u.mac || "",
    u.account_name ? `${u.account_name} (${u.account})` : u.account || "", [u.brand, u.model].filter(Boolean).join(" "),
    u.enabled ? "" : el("span", { class: "warn" }, "disabled")]);
  const next = page.next ? el("button", { id: "units-next", onclick: () => go("phones", { q, cursor: page.next }) }, "Next page") : null;
  show(root, el("h2", {}, "Phones"), form,
    rows.length ? table(["unit", "name", "MAC", "account", "model", ""], rows, { id: "units-table" }) : el("p", { class: "muted", id: "units-none" }, "No unit matches."),
    el("div", { class: "pager" }, p.get("cursor") ? link(`#/phones?${new URLSearchParams({ q })}`, "First page") : null, next));
}

export async function unit(root) {
  const id = params().get("id");
  const enc = encodeURIComponent(id);
  const [view, why, log] = await Promise.all([api(`/v1/units/${enc}`), api(`/v1/units/${enc}/why`), api(`/v1/units/${enc}/requests`)]);
  const u = view.unit || {};
  show(root,
    el("h2", {}, `Unit ${u.name || id}`),
    facts([["id", id], ["MAC", u.mac || ""], ["model", [u.brand, u.family, u.model].filter(Boolean).join(" / ")],
      ["account", text(view.account?.id || u.account_id || "")],
      ["served", view.served ? el("span", { class: "ok" }, "yes") : el("span", { class: "bad" }, `no: ${text(view.reason)}`)],
      ["HTTP credentials", view.auth ? "required" : "none"], ["last seen", lastSeen(view.last_seen)],
      ["stale", view.stale ? "yes" : "no"]]),
    el("h3", {}, "Configuration — why this value"), whyTable(why),
    el("h3", {}, "Files"), files(id, view),
    el("h3", {}, "Requests"), requests(log),
    el("h3", {}, "Errors"), errorsOf(view.errors));
}

function whyTable(why) {
  const rows = why.values.map((v) => {
    const detail = el("td", { colspan: 4, class: "why-cell" });
    const row = el("tr", { class: "why-detail", hidden: true }, detail);
    const button = el("button", { class: "secondary why-button", "data-path": v.path, onclick: () => {
      row.hidden = !row.hidden;
      if (!row.hidden) show(detail, explanation(v));
    } }, "why?");
    const set = v.set_by || {};
    return [el("tr", { "data-path": v.path }, el("td", {}, el("code", {}, v.path)), el("td", {}, text(v.value)),
      el("td", {}, `${set.layer || "?"} · ${set.doc || "?"}`, v.decided_by_lock ? el("span", { class: "badge" }, "locked") : null),
      el("td", {}, button)), row];
  });
  const unplaced = why.unplaced.length ? [el("h3", {}, "Refused values that set nothing"),
    table(["path", "document", "layer", "reason"], why.unplaced.map((r) => [r.path, r.doc, r.layer, r.reason]))] : null;
  return [el("table", { id: "why-table" }, el("thead", {}, el("tr", {}, ["path", "value", "set by", ""].map((h) => el("th", {}, h)))),
    el("tbody", {}, rows.flat())), unplaced];
}

const LAYERS = {
  model_defaults: "the model's schema default",
  account_defaults: "the defaults of an account's provision config",
  unit: "the unit's own config",
  policy: "a policy",
  account_config: "the config of an account's provision config (strongest)",
};

/** The "why this value" box of one leaf. */
function explanation(v) {
  const set = v.set_by || {};
  const lines = [el("p", {}, "Set by ", el("strong", {}, LAYERS[set.layer] || set.layer), `: document ${set.doc}`,
    set.account ? ` of account ${set.account}` : "", set.via ? `, through profile ${set.via}` : "", ".")];
  if (v.decided_by_lock) {
    lines.push(el("p", { class: "lock" }, `Decided by the lock of account ${v.decided_by_lock}: the layers below it cannot change this value.`));
  }
  for (const r of v.refused) {
    lines.push(el("p", { class: "refused" }, `Refused: ${r.layer} ${r.doc} tried ${r.path} — ${r.reason}`));
  }
  if (!v.refused.length) lines.push(el("p", { class: "muted" }, "Nothing else tried to set it."));
  return el("div", { class: "why" }, lines);
}

function files(id, view) {
  const out = el("div", { id: "file-view" });
  const reveal = el("input", { type: "checkbox", id: "reveal" });
  const open = async (name) => {
    const masked = reveal.checked ? "" : "?masked=true";
    const body = await api(`/v1/units/${encodeURIComponent(id)}/files/${encodeURIComponent(name)}${masked}`, "text");
    show(out, el("h3", {}, `${name}${reveal.checked ? " (secrets shown)" : " (secrets masked)"}`), el("pre", { id: "file-body" }, body));
  };
  const all = [...Object.entries(view.files || {}).map(([n, f]) => [n, f, "device"]),
    ...Object.entries(view.common_files || {}).map(([n, f]) => [n, f, "model-common"])];
  const rows = all.map(([name, f, kind]) => [el("button", { class: "secondary file-button", "data-file": name, onclick: () => open(name) }, name),
    kind, f.content_type, String(f.bytes), text(f.etag)]);
  return [table(["file", "kind", "type", "bytes", "etag"], rows, { id: "files-table" }),
    el("label", {}, el("span", {}, reveal, " reveal secrets (admin)")), out];
}

function lastSeen(r) {
  if (!r) return "never (since this instance started)";
  return `${r.time}: ${r.method} ${r.file} from ${r.ip} → ${r.status} (${r.reason})`;
}

function requests(log) {
  const rows = (log.requests || []).slice().reverse().map((r) => [text(r.time || r.at), r.ip || "", r.user_agent || r.ua || "",
    `${r.method || ""} ${r.file || ""}`, String(r.status ?? ""), text(r.reason || ""), r.status === 429 ? el("span", { class: "warn" }, "throttled (429)") : ""]);
  return rows.length ? table(["time", "from", "User-Agent", "request", "status", "reason", "throttling"], rows, { id: "requests-table" })
    : el("p", { class: "muted", id: "requests-table" }, "No request since this instance started.");
}

function errorsOf(errors) {
  const rows = (errors || []).map((e) => [e.db || "", e.doc || "", e.reason || ""]);
  return rows.length ? table(["database", "document", "reason"], rows) : el("p", { class: "ok" }, "None.");
}
