// Insights: metric curves (uPlot; paper Figure 8) and the z / z* scatter (canvas; paper Figure 4).
// Charts initialise on every htmx load, so the section htmx swaps in when a new model activates redraws.
"use strict";
(function () {
  const TAB10 = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
  const RAMP = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]]; // viridis stops

  function ramp(t) {
    t = Math.max(0, Math.min(1, t));
    const x = t * (RAMP.length - 1);
    const i = Math.min(RAMP.length - 2, Math.floor(x));
    const f = x - i;
    const c = RAMP[i].map((v, k) => Math.round(v + f * (RAMP[i + 1][k] - v)));
    return "rgb(" + c.join(",") + ")";
  }

  async function getJson(url) {
    const r = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
    let data = null;
    try { data = await r.json(); } catch (e) { data = null; }
    if (!r.ok) {
      const d = data && data.detail;
      throw new Error(typeof d === "string" ? d : "HTTP " + r.status);
    }
    return data;
  }

  function note(el, text) {
    const p = document.createElement("p");
    p.className = "muted chart-note";
    p.textContent = text;
    el.replaceChildren(p);
  }

  // -- metric curves ---------------------------------------------------------------------------------
  function seriesOf(points, attributes, metric) {
    // One series per strategy when the points come from several; else overall plus one per attribute.
    const strategies = Array.from(new Set(points.map((p) => p.strategy).filter(Boolean)));
    const xs = Array.from(new Set(points.map((p) => p.n_labels))).sort((a, b) => a - b);
    const defs = [];
    if (metric === "test_ll") {
      if (strategies.length > 1) strategies.forEach((s) => defs.push({ label: "test LL · " + s, pick: (p) => (p.strategy === s ? p.test_ll : undefined) }));
      else defs.push({ label: "test log-likelihood", pick: (p) => p.test_ll });
    } else if (strategies.length > 1) {
      strategies.forEach((s) => defs.push({ label: "overall · " + s, pick: (p) => (p.strategy === s ? p.overall : undefined) }));
    } else {
      defs.push({ label: "overall", pick: (p) => p.overall });
      attributes.forEach((a) => defs.push({ label: a, pick: (p) => (p.attributes && p.attributes[a] ? p.attributes[a].score : undefined) }));
    }
    if (metric !== "test_ll" && strategies.length <= 1) {
      // Raw z: the same metric with no lens at all, the bar a version must clear to go live.
      defs.push({ label: "raw z, no lens (overall)", reference: true, pick: (p) => p.baseline_overall });
    }
    if (metric !== "test_ll") {
      // Chance: the score a classifier reaches from the label frequencies alone, averaged like "overall".
      defs.push({ label: "chance (overall)", chance: true, pick: (p) => {
        const cs = attributes.map((a) => (p.attributes && p.attributes[a] ? p.attributes[a].chance_score : undefined))
          .filter((v) => v !== undefined && v !== null && isFinite(v));
        return cs.length ? cs.reduce((s, v) => s + Number(v), 0) / cs.length : undefined;
      } });
    }
    const data = [xs];
    for (const d of defs) {
      const ys = xs.map(() => null);
      for (const p of points) {
        const v = d.pick(p);
        if (v !== undefined && v !== null && isFinite(v)) ys[xs.indexOf(p.n_labels)] = Number(v);
      }
      data.push(ys);
    }
    return { defs: defs, data: data };
  }

  async function drawMetrics(el) {
    const metric = el.dataset.metric || "score";
    const attributes = JSON.parse(el.dataset.attributes || "[]");
    let points;
    try { points = (await getJson(el.dataset.url)).points; } catch (err) { note(el, "Metrics unavailable: " + err.message); return; }
    const { defs, data } = seriesOf(points, attributes, metric);
    const filled = data.slice(1).map((ys, i) => (defs[i].chance || defs[i].reference ? 0 : ys.filter((v) => v !== null).length));
    el.dataset.points = String(Math.max(0, ...filled));
    if (!points.length || !filled.some((n) => n > 0)) {
      // The server says why (the evaluation's reasons for the latest point, or what must happen first).
      note(el, el.dataset.emptyReason || (metric === "test_ll" ? "No test log-likelihood yet." : "No metric points yet."));
      el.dataset.empty = "true";
      return;
    }
    el.dataset.empty = "false";
    const width = Math.max(280, el.clientWidth || 480);
    const opts = {
      width: width, height: 260,
      scales: { x: { time: false } },
      axes: [{ label: "number of labels" }, { label: metric === "test_ll" ? "test LL (nats)" : "score (%)" }],
      series: [{ label: "labels" }].concat(defs.map((d, i) => (d.chance
        ? { label: d.label, stroke: "#888", width: 1.5, dash: [6, 4], spanGaps: true, points: { show: false } }
        : d.reference
        ? { label: d.label, stroke: "#444", width: 1.5, dash: [2, 3], spanGaps: true, points: { show: false } }
        : { label: d.label, stroke: TAB10[i % TAB10.length], width: i === 0 ? 2.5 : 1.5, spanGaps: true,
            points: { show: true, size: 6 } }))),
      legend: { live: true },
    };
    el.dataset.chance = String(defs.some((d, i) => d.chance && data[i + 1].some((v) => v !== null)));
    el.replaceChildren();
    const plot = new uPlot(opts, data, el);
    el._plot = plot;
  }

  // -- scatter ---------------------------------------------------------------------------------------
  function colourer(info) {
    if (info.kind === "categorical" && info.levels) {
      return (v) => TAB10[Math.max(0, info.levels.indexOf(v)) % TAB10.length];
    }
    if (info.kind === "ordinal" && info.levels) {
      const n = Math.max(1, info.levels.length - 1);
      return (v) => ramp(info.levels.indexOf(v) / n);
    }
    const vals = info.points.value.concat(info.points.predicted).filter((v) => typeof v === "number");
    const lo = info.low !== null && info.low !== undefined ? info.low : Math.min(...vals);
    const hi = info.high !== null && info.high !== undefined ? info.high : Math.max(...vals);
    return (v) => ramp((Number(v) - lo) / ((hi - lo) || 1));
  }

  function drawPanel(canvas, pts, labelled, colours, axes, title) {
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth || 320;
    const h = canvas.clientHeight || 320;
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, w, h);
    const pad = 34;
    const xs = pts.map((p) => p[0]);
    const ys = pts.map((p) => p[1]);
    const [x0, x1] = [Math.min(...xs), Math.max(...xs)];
    const [y0, y1] = [Math.min(...ys), Math.max(...ys)];
    const sx = (x) => pad + ((x - x0) / ((x1 - x0) || 1)) * (w - 2 * pad);
    const sy = (y) => h - pad - ((y - y0) / ((y1 - y0) || 1)) * (h - 2 * pad);
    ctx.strokeStyle = "#bbb";
    ctx.strokeRect(pad - 4, pad - 4, w - 2 * pad + 8, h - 2 * pad + 8);
    // Unlabelled items first (faint, coloured by the prediction), labelled ones on top.
    for (const pass of [false, true]) {
      ctx.globalAlpha = pass ? 0.95 : 0.35;
      for (let i = 0; i < pts.length; i++) {
        if (labelled[i] !== pass) continue;
        ctx.fillStyle = colours[i];
        ctx.beginPath();
        ctx.arc(sx(pts[i][0]), sy(pts[i][1]), pass ? 3.2 : 2.2, 0, 2 * Math.PI);
        ctx.fill();
        if (pass) { ctx.strokeStyle = "rgba(0,0,0,.55)"; ctx.lineWidth = 0.6; ctx.stroke(); }
      }
    }
    ctx.globalAlpha = 1;
    ctx.fillStyle = "#222";
    ctx.font = "13px system-ui, sans-serif";
    ctx.fillText(title, pad - 4, 18);
    ctx.font = "12px system-ui, sans-serif";
    ctx.fillText(axes[0], w / 2 - 20, h - 8);
    ctx.save();
    ctx.translate(12, h / 2 + 20);
    ctx.rotate(-Math.PI / 2);
    ctx.fillText(axes[1], 0, 0);
    ctx.restore();
  }

  function legend(el, info, colour) {
    el.replaceChildren();
    const items = info.levels ? info.levels : ["low", "high"];
    items.forEach((lv, i) => {
      const li = document.createElement("li");
      const sw = document.createElement("span");
      sw.className = "swatch";
      sw.style.background = info.levels ? colour(lv) : ramp(i);
      li.append(sw, document.createTextNode(info.levels ? lv : (i === 0 ? String(info.low ?? "low") : String(info.high ?? "high"))));
      el.appendChild(li);
    });
  }

  async function drawScatter(el) {
    const select = el.querySelector("select[name=colour]");
    const attribute = select ? select.value : "";
    const status = el.querySelector("[data-role=status]");
    let info;
    try {
      info = await getJson(el.dataset.url + (attribute ? "?attribute=" + encodeURIComponent(attribute) : ""));
    } catch (err) {
      status.textContent = "Scatter unavailable: " + err.message;
      return;
    }
    const colour = colourer(info);
    const labelled = info.points.value.map((v) => v !== null && v !== undefined);
    const colours = info.points.value.map((v, i) => colour(labelled[i] ? v : info.points.predicted[i]));
    const ev = info.z.explained_variance_ratio.map((r) => Math.round(100 * r) + "%");
    drawPanel(el.querySelector("canvas[data-space=z]"), info.points.z, labelled, colours,
      ["PC1 (" + (ev[0] || "") + ")", "PC2 (" + (ev[1] || "") + ")"], "z: first two principal components");
    drawPanel(el.querySelector("canvas[data-space=zstar]"), info.points.z_star, labelled, colours,
      info.z_star.axes, "z*: the attribute dimensions");
    legend(el.querySelector("[data-role=legend]"), info, colour);
    const n = info.points.item_id.length;
    const nl = labelled.filter(Boolean).length;
    status.textContent = n + " items (" + nl + " labelled: solid; others faint, coloured by the model's prediction), model v" + info.model_version + ".";
    el.dataset.points = String(n);
  }

  function init(scope) {
    scope.querySelectorAll("[data-chart=metrics]").forEach((el) => drawMetrics(el));
    scope.querySelectorAll("[data-chart=scatter]").forEach((el) => {
      drawScatter(el);
      const select = el.querySelector("select[name=colour]");
      if (select) select.addEventListener("change", () => drawScatter(el));
    });
  }

  if (window.htmx) htmx.onLoad((elt) => init(elt));
  else document.addEventListener("DOMContentLoaded", () => init(document));

  let resizeTimer = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => {
      document.querySelectorAll("[data-chart=metrics]").forEach((el) => {
        if (el._plot) el._plot.setSize({ width: Math.max(280, el.clientWidth), height: 260 });
      });
    }, 150);
  });
})();
