// A small SVG line chart, and the Prometheus text parser the live charts
// read the daemon's own metrics with.

const SVG = "http://www.w3.org/2000/svg";
const WINDOW_DOTS = 120;

function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  return node;
}

/**
 * Draws `series` ([{name, color, points: [[t, y], ...]}]) into a new SVG;
 * the y axis starts at 0 and is labelled with `unit`.
 */
export function lineChart(series, { unit = "", width = 640, height = 180, id } = {}) {
  const root = svg("svg", { class: "chart", viewBox: `0 0 ${width} ${height}`, role: "img" });
  if (id) root.setAttribute("id", id);
  const all = series.flatMap((s) => s.points);
  const pad = { l: 48, r: 8, t: 10, b: 20 };
  const xs = all.map(([t]) => t), ys = all.map(([, y]) => y);
  // The x axis spans the samples shown (timestamps, not from zero).
  const x0 = xs.length ? Math.min(...xs) : 0, x1 = xs.length ? Math.max(...xs) : 1;
  const y1 = Math.max(...ys, 0) * 1.1 || 1;
  const sx = (t) => pad.l + ((t - x0) / (x1 - x0 || 1)) * (width - pad.l - pad.r);
  const sy = (y) => height - pad.b - (y / y1) * (height - pad.t - pad.b);
  for (const frac of [0, 0.5, 1]) {
    const y = y1 * frac;
    root.append(svg("line", { x1: pad.l, x2: width - pad.r, y1: sy(y), y2: sy(y), stroke: "#e4e7ec" }));
    const label = svg("text", { x: 4, y: sy(y) + 3 });
    label.textContent = `${format(y)}${unit}`;
    root.append(label);
  }
  for (const s of series) {
    if (s.points.length === 0) continue;
    const d = s.points.map(([t, y], i) => `${i ? "L" : "M"}${sx(t).toFixed(1)},${sy(y).toFixed(1)}`).join(" ");
    const path = svg("path", { d, class: "series", stroke: s.color });
    path.setAttribute("data-series", s.name);
    path.setAttribute("data-points", String(s.points.length));
    root.append(path);
    // Dots too: a single sample draws no line.
    for (const [t, y] of s.points.slice(-WINDOW_DOTS)) {
      root.append(svg("circle", { cx: sx(t).toFixed(1), cy: sy(y).toFixed(1), r: 2.5, fill: s.color }));
    }
  }
  const legend = svg("text", { x: pad.l + 4, y: height - 4 });
  legend.textContent = series.map((s) => s.name).join("  ·  ");
  root.append(legend);
  return root;
}

function format(y) {
  if (y >= 100) return y.toFixed(0);
  if (y >= 1) return y.toFixed(1);
  return y.toPrecision(2);
}

/** Prometheus/OpenMetrics text → [{name, labels, value}]. */
export function parseMetrics(textBody) {
  const samples = [];
  for (const line of textBody.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][\w:]*)(\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const labels = {};
    for (const l of (m[3] || "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2];
    samples.push({ name: m[1], labels, value: Number(m[4]) });
  }
  return samples;
}

/** The sum of every sample named `name` whose labels match `where`. */
export function sum(samples, name, where = {}) {
  return samples
    .filter((s) => s.name === name && Object.entries(where).every(([k, v]) => s.labels[k] === v))
    .reduce((total, s) => total + s.value, 0);
}
