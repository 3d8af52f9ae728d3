// The console's entry point: the sign-in form and the hash router. What
// may be seen is the admin API's decision (see api.js): with
// `http.api.admin_token` set every read needs the token, without one the API
// answers loopback clients only.

import { el, show } from "./dom.js";
import * as views from "./views.js";
import * as phones from "./phones.js";
import { ApiFailure, setToken, hasToken } from "./api.js";

const main = document.getElementById("main");

function loginForm(failure) {
  const input = el("input", { type: "password", name: "token", autocomplete: "off", size: 40 });
  const form = el("form", { class: "inline", id: "login", onsubmit: (event) => {
    event.preventDefault();
    setToken(input.value);
    route();
  } }, el("label", {}, "Admin token (http.api.admin_token)", input), el("button", { type: "submit" }, "Sign in"));
  const why = failure.status === 403
    ? "The api answers admin reads to loopback clients only (no http.api.admin_token is set): open the console from the daemon's host, e.g. through an SSH tunnel."
    : "The api needs its admin token for every read; the console shows nothing without it.";
  return [el("h2", {}, "Sign in"), el("p", {}, why), failure.status === 401 ? form : null];
}

const VIEWS = {
  overview: views.overview,
  errors: views.errors,
  phones: phones.search,
  unit: phones.unit,
  routing: views.routing,
  acls: views.acls,
  edge: views.edge,
};

let generation = 0;

/** Renders the view the hash names; a newer navigation cancels an older one. */
async function route() {
  const name = location.hash.slice(2).split("?")[0] || "overview";
  const view = VIEWS[name] || views.overview;
  const mine = ++generation;
  for (const a of document.querySelectorAll("#nav a")) {
    a.classList.toggle("active", a.dataset.view === (name === "unit" ? "phones" : name));
  }
  const container = el("section", { id: `view-${name}` });
  show(main, container);
  views.stopTimers();
  try {
    await view(container, () => mine === generation);
  } catch (failure) {
    if (mine !== generation) return;
    if (failure instanceof ApiFailure && (failure.status === 401 || failure.status === 403)) {
      show(main, ...loginForm(failure));
    } else {
      show(container, el("p", { class: "bad", id: "failure" }, `Failed: ${failure.message}`));
    }
  }
  const who = document.getElementById("who");
  const signOut = el("button", { class: "secondary", onclick: () => { setToken(null); route(); } }, "Sign out");
  show(who, hasToken() ? signOut : "");
}

window.addEventListener("hashchange", route);
route();
