// The API client: every read goes to the api listener with the admin token
// the operator gave (kept in this tab's sessionStorage only).

export const TOKEN_KEY = "caldera.console.token";

/** An API failure, with the status and the JSON error's reason. */
export class ApiFailure extends Error {
  constructor(status, reason) {
    super(`${status}: ${reason}`);
    this.status = status;
  }
}

function headers() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

/** GET `path` from the api listener; JSON unless `as` is "text". */
export async function api(path, as = "json") {
  const response = await fetch(path, { headers: headers(), cache: "no-store", credentials: "omit" });
  if (!response.ok) {
    let reason = response.statusText;
    try { reason = (await response.json()).reason || reason; } catch { /* not JSON */ }
    throw new ApiFailure(response.status, reason);
  }
  return as === "text" ? response.text() : response.json();
}

/** The query string of the current hash route. */
export function params() {
  const hash = location.hash.slice(1);
  const q = hash.indexOf("?");
  return new URLSearchParams(q < 0 ? "" : hash.slice(q + 1));
}

/** Navigates to a view with parameters. */
export function go(view, values = {}) {
  const query = new URLSearchParams(Object.entries(values).filter(([, v]) => v !== "" && v != null));
  const text = query.toString();
  location.hash = `#/${view}${text ? `?${text}` : ""}`;
}

/** Stores or forgets the admin token. */
export function setToken(token) {
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
}

export function hasToken() {
  return Boolean(sessionStorage.getItem(TOKEN_KEY));
}
