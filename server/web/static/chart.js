/* paramsched dashboard: line charts drawn as SVG by hand (no third-party code).
 *
 * PSChart.draw(spec) returns an <svg class="chart"> element. spec:
 *   title, param, width, height,
 *   series: [{group, cls, label, iterations, values, splitAt, kind}]  (one <g class="series">
 *           each, carrying data-group/data-count/data-iterations/data-values: the exact
 *           numbers drawn, for checks; split at splitAt into a handed-out and a planned line)
 *   marks:  [{x, kind, label}]   vertical lines (epoch, change, resume, issued, end, from)
 *   xmin, xmax                   the iteration axis
 *   waitingFrom                  an iteration from which values wait for a decision
 * Every string goes into the DOM as text (textContent), never as markup.
 */
(function () {
  "use strict";
  const NS = "http://www.w3.org/2000/svg";

  function svg(tag, attrs, text) {
    const node = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = String(text);
    return node;
  }

  function fmt(v) {
    if (typeof v !== "number") return String(v);
    if (v === 0) return "0";
    const a = Math.abs(v);
    if (a >= 1e-3 && a < 1e5) return String(Number(v.toPrecision(4)));
    return v.toExponential(2).replace("e+", "e");
  }

  function ticks(lo, hi, count) {
    if (!(hi > lo)) return [lo];
    const raw = (hi - lo) / count;
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
    const out = [];
    for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) {
      out.push(Math.abs(t) < step * 1e-9 ? 0 : t);
    }
    return out;
  }

  function draw(spec) {
    const W = spec.width || 640, H = spec.height || 260;
    const L = 62, R = 14, T = 14, B = 34;
    const root = svg("svg", {class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img",
                             "data-param": spec.param || ""});
    root.appendChild(svg("title", {}, spec.title || spec.param || "chart"));
    const xlo = spec.xmin || 0, xhi = Math.max(spec.xmax || 1, xlo + 1);
    const inside = (it) => it >= xlo && it <= xhi;
    const finite = [];
    for (const s of spec.series) {
      s.values.forEach((v, i) => { if (Number.isFinite(v) && inside(s.iterations[i])) finite.push(v); });
    }
    let ylo = finite.length ? Math.min(...finite) : 0, yhi = finite.length ? Math.max(...finite) : 1;
    if (ylo === yhi) { const d = Math.abs(ylo) * 0.1 || 1; ylo -= d; yhi += d; }
    const pad = (yhi - ylo) * 0.05; ylo -= pad; yhi += pad;
    const X = (x) => L + (x - xlo) / (xhi - xlo) * (W - L - R);
    const Y = (y) => T + (1 - (y - ylo) / (yhi - ylo)) * (H - T - B);

    if (spec.waitingFrom !== undefined && spec.waitingFrom !== null && spec.waitingFrom < xhi) {
      const x0 = X(Math.max(spec.waitingFrom, xlo));
      root.appendChild(svg("rect", {class: "waiting", x: x0, y: T, width: X(xhi) - x0,
                                    height: H - T - B}));
      root.appendChild(svg("text", {x: x0 + 4, y: H - B - 6, class: "mark-label"},
                           spec.waitingLabel || "waiting for a validation decision"));
    }
    for (const t of ticks(ylo, yhi, 5)) {
      root.appendChild(svg("line", {class: "grid", x1: L, x2: W - R, y1: Y(t), y2: Y(t)}));
      root.appendChild(svg("text", {x: L - 6, y: Y(t) + 4, "text-anchor": "end"}, fmt(t)));
    }
    for (const t of ticks(xlo, xhi, 6)) {
      root.appendChild(svg("line", {class: "axis", x1: X(t), x2: X(t), y1: H - B, y2: H - B + 4}));
      root.appendChild(svg("text", {x: X(t), y: H - B + 16, "text-anchor": "middle"}, fmt(t)));
    }
    root.appendChild(svg("text", {x: W - R, y: H - 4, "text-anchor": "end"}, "iteration"));
    const marks = svg("g", {class: "marks"});
    let labelRow = 0;
    for (const m of spec.marks || []) {
      if (m.x < xlo || m.x > xhi) continue;
      marks.appendChild(svg("line", {class: `mark mark-${m.kind}`, x1: X(m.x), x2: X(m.x),
                                     y1: T, y2: H - B, "data-kind": m.kind, "data-x": m.x}));
      if (m.label) {
        const right = X(m.x) > W - R - 90;  // near the right edge: label on the left
        marks.appendChild(svg("text", {class: "mark-label", x: X(m.x) + (right ? -3 : 3),
                                       "text-anchor": right ? "end" : "start",
                                       y: T + 10 + 11 * (labelRow++ % 3)}, m.label));
      }
    }
    root.appendChild(marks);
    root.appendChild(svg("line", {class: "axis", x1: L, x2: W - R, y1: H - B, y2: H - B}));
    root.appendChild(svg("line", {class: "axis", x1: L, x2: L, y1: T, y2: H - B}));

    const points = (its, vals, from, to) => {
      const out = [];
      for (let i = from; i < to; i++) {
        if (Number.isFinite(vals[i]) && inside(its[i])) out.push(`${X(its[i]).toFixed(2)},${Y(vals[i]).toFixed(2)}`);
      }
      return out.join(" ");
    };
    for (const s of spec.series) {
      const g = svg("g", {class: `series ${s.kind || ""}`.trim(), "data-group": s.group,
                          "data-count": s.values.length,
                          "data-iterations": s.iterations.join(" "),
                          "data-values": s.values.map((v) => String(v)).join(" ")});
      const n = s.values.length;
      let split = n;
      if (s.splitAt !== undefined && s.splitAt !== null) {
        split = s.iterations.findIndex((it) => it >= s.splitAt);
        if (split < 0) split = n;
      }
      const cls = `line ${s.cls || "c0"} ${s.kind || ""}`;
      if (split > 0) g.appendChild(svg("polyline", {class: `${cls} handed-out`,
                                                   points: points(s.iterations, s.values, 0, split)}));
      if (split < n) {  // the planned part starts at the last handed-out point: no gap
        g.appendChild(svg("polyline", {class: `${cls} planned`,
                                       points: points(s.iterations, s.values, Math.max(0, split - 1), n)}));
      }
      root.appendChild(g);
    }
    hover(root, spec, X, Y, W, H, L, R, T, B, xlo, xhi);
    return root;
  }

  function nearest(its, x) {
    let lo = 0, hi = its.length - 1;
    while (hi - lo > 1) { const mid = (lo + hi) >> 1; if (its[mid] <= x) lo = mid; else hi = mid; }
    return Math.abs(its[hi] - x) < Math.abs(its[lo] - x) ? hi : lo;
  }

  function hover(root, spec, X, Y, W, H, L, R, T, B, xlo, xhi) {
    const line = svg("line", {class: "hover-line hidden", y1: T, y2: H - B});
    const box = svg("g", {class: "hidden"});
    const rect = svg("rect", {class: "hover-box", rx: 3});
    const text = svg("text", {});
    box.appendChild(rect); box.appendChild(text);
    root.appendChild(line); root.appendChild(box);
    root.addEventListener("mouseleave", () => { line.classList.add("hidden"); box.classList.add("hidden"); });
    root.addEventListener("mousemove", (ev) => {
      const r = root.getBoundingClientRect();
      const px = (ev.clientX - r.left) / r.width * W;
      if (px < L || px > W - R) return;
      const it = xlo + (px - L) / (W - L - R) * (xhi - xlo);
      while (text.firstChild) text.removeChild(text.firstChild);
      let shown = null, row = 0;
      for (const s of spec.series) {
        if (!s.iterations.length) continue;
        const i = nearest(s.iterations, it);
        if (shown === null) {
          shown = s.iterations[i];
          text.appendChild(svg("tspan", {x: 8, dy: 14}, `iteration ${shown}`));
        }
        text.appendChild(svg("tspan", {x: 8, dy: 14}, `${s.label}: ${fmt(s.values[i])}`));
        row++;
      }
      if (shown === null) return;
      const bw = 190, bh = 10 + 14 * (row + 1);
      const bx = X(shown) + bw + 12 > W ? X(shown) - bw - 6 : X(shown) + 6;
      line.setAttribute("x1", X(shown)); line.setAttribute("x2", X(shown));
      box.setAttribute("transform", `translate(${bx},${T})`);
      rect.setAttribute("width", bw); rect.setAttribute("height", bh);
      line.classList.remove("hidden"); box.classList.remove("hidden");
    });
  }

  window.PSChart = {draw, fmt};
})();
