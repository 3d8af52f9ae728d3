// DOM helpers. Every value reaches the page as a text node (no HTML string
// is ever parsed), so a document's content can never become markup.

/** An element: el("td", {class: "x"}, "text", child, ...). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(text(child)));
  }
}

/** A value as text: strings as they are, anything else as JSON. */
export function text(value) {
  if (typeof value === "string") return value;
  if (value === undefined) return "";
  return JSON.stringify(value);
}

/** A table: headers, then rows of cells (each a node or a value). */
export function table(headers, rows, attrs = {}) {
  return el("table", attrs,
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))),
    el("tbody", {}, rows.map((cells) =>
      cells instanceof Node ? cells : el("tr", {}, cells.map((c) => el("td", {}, c))))));
}

/** Replaces the content of `node`. */
export function show(node, ...children) {
  node.replaceChildren();
  append(node, children);
}

/** A link inside the console. */
export function link(hash, label) {
  return el("a", { href: hash }, label);
}

/** A definition list from [term, value] pairs. */
export function facts(pairs) {
  return el("dl", { class: "facts" }, pairs.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
}

/** Seconds as "1h 2m 3s". */
export function duration(seconds) {
  const s = Math.floor(seconds % 60), m = Math.floor(seconds / 60) % 60, h = Math.floor(seconds / 3600);
  return (h ? `${h}h ` : "") + (h || m ? `${m}m ` : "") + `${s}s`;
}
