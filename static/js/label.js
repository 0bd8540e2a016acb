// The labelling page: keyboard-first, driven by the REST API (queue/next, labels, retract, release).
// The next item is leased and its image decoded ahead of time, so Enter swaps in an already painted-ready
// <img>; the label POST (idempotent, retried) runs behind it. window.lenslabLabelling exposes the
// measured Enter→paint times for the browser tests.
"use strict";
(function () {
  const cfg = JSON.parse(document.getElementById("label-config").textContent);
  const csrfMeta = document.querySelector('meta[name="csrf-token"]');
  const csrf = csrfMeta ? csrfMeta.content : "";
  const root = document.getElementById("labeller");
  const form = document.getElementById("label-form");
  const note = document.getElementById("stage-note");
  const msg = document.getElementById("message");
  const leaseLeft = document.getElementById("lease-left");
  const itemIdEl = document.getElementById("item-id");
  const evalBadge = document.getElementById("eval-badge");
  const predToggle = document.getElementById("show-prediction");
  const predPanel = document.getElementById("prediction");
  const fieldsets = Array.from(form.querySelectorAll("fieldset.attr"));
  const attrs = cfg.attributes;
  const pid = cfg.project_id;

  const timings = [];
  window.lenslabLabelling = { timings: timings };

  let current = null; // {itemId, leaseId, expiresAt, eval, score, img, ready, values}
  let queue = []; // leased entries whose images are loading or decoded
  const undoStack = []; // {entry, label: Promise<label id | null>}
  const doneLeases = new Set(); // leases this page ended (labelled, skipped, expired): never shown again
  let values = {};
  let active = 0;
  let filling = null;
  let emptyTimer = null;
  let heldBack = null; // {n, at}: items I skipped that the queue keeps from me, and when the first returns
  let chain = Promise.resolve();

  // -- small helpers -------------------------------------------------------------------------------
  function uuid() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    return Date.now().toString(36) + Math.random().toString(36).slice(2);
  }
  function sleep(ms) { return new Promise((r) => setTimeout(r, ms)); }
  function parseUtc(s) {
    if (!s) return null;
    return Date.parse(/[zZ]|[+-]\d\d:?\d\d$/.test(s) ? s : s + "Z");
  }
  function say(text, kind) {
    msg.textContent = text || "";
    msg.className = "message" + (kind ? " " + kind : "");
  }
  function detail(data) {
    if (!data || data.detail === undefined) return "";
    const d = data.detail;
    if (typeof d === "string") return d;
    if (Array.isArray(d)) return d.map((e) => (e && e.msg) ? (e.field ? e.field + ": " : "") + e.msg : String(e)).join("; ");
    return JSON.stringify(d);
  }
  async function api(method, url, body) {
    const opts = { method: method, credentials: "same-origin", headers: { Accept: "application/json" } };
    if (method !== "GET") opts.headers["X-CSRF-Token"] = csrf;
    if (body !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    const r = await fetch(url, opts);
    if (r.status === 401) {
      location.href = "/login?next=" + encodeURIComponent(location.pathname);
      throw Object.assign(new Error("signed out"), { status: 401 });
    }
    let data = null;
    try { data = await r.json(); } catch (e) { data = null; }
    if (!r.ok) throw Object.assign(new Error(detail(data) || "HTTP " + r.status), { status: r.status });
    return data;
  }
  function run(fn) {
    // Actions run one after another, so a fast typist never interleaves an undo with a submit.
    chain = chain.then(fn).catch((err) => say(String(err.message || err), "error"));
    return chain;
  }

  // -- the queue -----------------------------------------------------------------------------------
  function imageUrl(itemId) { return "/api/v1/items/" + itemId + "/image.png?scale=" + cfg.image.scale; }
  function entryFrom(it) {
    const img = new Image();
    img.alt = "Item " + it.item_id;
    img.width = cfg.image.width;
    img.height = cfg.image.height;
    img.decoding = "async";
    img.src = imageUrl(it.item_id);
    const e = { itemId: it.item_id, leaseId: it.lease_id, expiresAt: parseUtc(it.expires_at), eval: !!it.eval,
                score: it.score, img: img, values: null, decoded: false };
    e.ready = img.decode().then(() => { e.decoded = true; return true; }, () => false);
    return e;
  }
  function fill() {
    if (filling) return filling;
    filling = (async () => {
      try {
        const data = await api("POST", "/api/v1/projects/" + pid + "/queue/next?n=2");
        const held = new Set(queue.map((e) => e.leaseId));
        if (current) held.add(current.leaseId);
        for (const it of data.items) {
          if (!held.has(it.lease_id) && !doneLeases.has(it.lease_id)) queue.push(entryFrom(it));
        }
        if (data.skipped !== undefined) heldBack = { n: data.skipped, at: data.next_return_at ? parseUtc(data.next_return_at) : null };
        markPrefetch();
        return data.items.length;
      } catch (err) {
        say("Could not reach the queue: " + err.message, "error");
        return 0;
      } finally {
        filling = null;
      }
    })();
    return filling;
  }
  function markPrefetch() {
    const next = queue[0];
    if (!next) { root.dataset.prefetched = "false"; return; }
    next.ready.then(() => { if (queue[0] === next) root.dataset.prefetched = "true"; });
    root.dataset.prefetched = next.decoded ? "true" : "false";
  }
  function live(e) { return !e.leaseId || (e.expiresAt && e.expiresAt > Date.now() + 1000); }

  async function advance(t0) {
    while (queue.length && !live(queue[0])) doneLeases.add(queue.shift().leaseId);
    if (!queue.length) {
      root.dataset.state = "loading";
      await fill();
      while (queue.length && !live(queue[0])) doneLeases.add(queue.shift().leaseId);
      if (!queue.length) { showEmpty(); return; }
    }
    await show(queue.shift(), t0);
    markPrefetch();
  }

  async function show(e, t0) {
    clearTimeout(emptyTimer);
    current = e;
    resetValues(e.values);
    const ok = await e.ready;
    const old = document.getElementById("item-image");
    if (old !== e.img) {
      e.img.id = "item-image";
      old.replaceWith(e.img);
    }
    note.hidden = true;
    root.dataset.itemId = String(e.itemId);
    root.dataset.state = "ready";
    itemIdEl.textContent = "#" + e.itemId;
    evalBadge.hidden = !e.eval;
    tickLease();
    if (!ok) say("The image of item " + e.itemId + " did not load; press S to skip it.", "error");
    if (t0 !== undefined) {
      // After decode: the next animation frame paints the swapped image; the task after it runs post-paint.
      requestAnimationFrame(() => setTimeout(() => timings.push(performance.now() - t0), 0));
    }
    if (predToggle.checked) showPrediction(e);
  }

  function showEmpty() {
    current = null;
    root.dataset.state = "empty";
    root.dataset.itemId = "";
    const img = document.getElementById("item-image");
    img.removeAttribute("src");
    itemIdEl.textContent = "—";
    leaseLeft.textContent = "—";
    evalBadge.hidden = true;
    note.hidden = false;
    let why = "every item is labelled or leased to another expert";
    if (heldBack && heldBack.n > 0) {
      why = "every item is labelled, leased to another expert, or one of the " + heldBack.n +
        " you skipped (kept for other experts" + (heldBack.at ? "; the first comes back to you at " + heldBack.at.toLocaleString() : "") + ")";
    }
    note.textContent = "The queue is empty: " + why + ". Checking again every 15 s.";
    emptyTimer = setTimeout(() => run(async () => { if (!current) { await fill(); await advance(); } }), 15000);
  }

  // -- values and controls -------------------------------------------------------------------------
  function setActive(i) {
    active = Math.max(0, Math.min(fieldsets.length - 1, i));
    fieldsets.forEach((fs, k) => {
      fs.classList.toggle("active", k === active);
      if (k === active) fs.setAttribute("aria-current", "true"); else fs.removeAttribute("aria-current");
    });
  }
  function showValue(i) {
    const a = attrs[i];
    const fs = fieldsets[i];
    const v = values[a.name];
    fs.querySelector('[data-role="value"]').textContent = v === null || v === undefined ? (v === null ? "don't know" : "not set") : String(v);
    fs.classList.toggle("set", v !== undefined && v !== null);
    fs.querySelectorAll("button.level").forEach((b) => b.setAttribute("aria-pressed", String(b.dataset.value === v)));
  }
  function choose(i, v) {
    values[attrs[i].name] = v;
    showValue(i);
    if (i < fieldsets.length - 1) setActive(i + 1);
  }
  function resetValues(previous) {
    values = {};
    attrs.forEach((a, i) => {
      if (previous && previous[a.name] !== undefined) values[a.name] = previous[a.name];
      if (a.kind === "continuous") {
        const fs = fieldsets[i];
        const v = values[a.name];
        fs.querySelector('[data-role="number"]').value = typeof v === "number" ? String(v) : "";
        fs.querySelector('[data-role="slider"]').value = String(typeof v === "number" ? v : (a.low + a.high) / 2);
      }
      showValue(i);
    });
    setActive(0);
  }
  function collect() {
    const out = {};
    for (const a of attrs) {
      const v = values[a.name];
      if (v !== undefined && v !== null) out[a.name] = v;
    }
    return out;
  }

  fieldsets.forEach((fs, i) => {
    const a = attrs[i];
    fs.addEventListener("focusin", () => setActive(i));
    fs.querySelectorAll("button.level").forEach((b) => b.addEventListener("click", () => choose(i, b.dataset.value)));
    fs.querySelector('[data-role="dont-know"]').addEventListener("click", () => choose(i, null));
    if (a.kind === "continuous") {
      const slider = fs.querySelector('[data-role="slider"]');
      const number = fs.querySelector('[data-role="number"]');
      slider.addEventListener("input", () => {
        values[a.name] = Number(slider.value);
        number.value = slider.value;
        showValue(i);
      });
      number.addEventListener("input", () => {
        const v = Number(number.value);
        if (number.value !== "" && Number.isFinite(v) && v >= a.low && v <= a.high) {
          values[a.name] = v;
          slider.value = String(v);
        } else {
          delete values[a.name];
        }
        showValue(i);
      });
    }
  });

  // -- actions -------------------------------------------------------------------------------------
  async function saveLabel(e, vals) {
    const body = { values: vals, idempotency_key: uuid() };
    if (e.leaseId) body.lease_id = e.leaseId;
    for (let attempt = 0; ; attempt++) {
      try {
        const out = await api("POST", "/api/v1/items/" + e.itemId + "/labels", body);
        return out.id;
      } catch (err) {
        if (err.status === 409 && body.lease_id && /lease/i.test(err.message)) {
          // The lease ran out before the label arrived: the label is still worth keeping.
          delete body.lease_id;
          body.idempotency_key = uuid();
          say("Your lease on item " + e.itemId + " had ended; the label was saved anyway.", "warn");
          continue;
        }
        if ((!err.status || err.status >= 500) && attempt < 5) {
          await sleep(400 * 2 ** attempt);
          continue;
        }
        say("The label of item " + e.itemId + " was not saved: " + err.message, "error");
        return null;
      }
    }
  }

  function bump(key, delta) {
    const el = document.getElementById(key);
    el.textContent = String(Math.max(0, Number(el.textContent) + delta));
  }
  let counterTimer = null;
  function refreshCounters() {
    clearTimeout(counterTimer);
    counterTimer = setTimeout(async () => {
      try {
        const c = await api("GET", cfg.counters_url);
        document.getElementById("c-mine").textContent = c.mine_today;
        document.getElementById("c-labelled").textContent = c.labelled;
        document.getElementById("c-items").textContent = c.items;
        document.getElementById("c-eval-labelled").textContent = c.eval_labelled;
        root.dataset.countersAt = String(Date.now());
      } catch (err) { /* the optimistic counts stay until the next refresh */ }
    }, 150);
  }

  async function submit() {
    if (!current) return;
    const vals = collect();
    if (!Object.keys(vals).length) {
      say("Choose a value for at least one attribute (or press S to skip).", "warn");
      return;
    }
    const t0 = performance.now();
    const e = current;
    e.values = Object.assign({}, values);
    doneLeases.add(e.leaseId);
    const label = saveLabel(e, vals);
    undoStack.push({ entry: e, label: label });
    if (undoStack.length > 50) undoStack.shift();
    bump("c-mine", 1);
    bump("c-labelled", 1);
    if (e.eval) bump("c-eval-labelled", 1);
    say("");
    await advance(t0);
    label.then(() => fill()).then(() => { refreshCounters(); if (!current) advance(); });
  }

  function skipReturn() {
    const h = cfg.skip_hours;
    if (h === null || h === undefined) return "tomorrow (UTC)";
    if (h === 0) return "whenever the queue reaches it again";
    return h < 1 ? "in " + Math.round(h * 60) + " min" : "in " + (Math.round(h * 10) / 10) + " h";
  }

  async function skip() {
    if (!current) return;
    const e = current;
    doneLeases.add(e.leaseId);
    const released = e.leaseId
      ? api("POST", "/api/v1/leases/" + e.leaseId + "/release").catch((err) => say("Skip: " + err.message, "warn"))
      : Promise.resolve();
    await advance();
    say("Skipped item " + e.itemId + ": other experts get it; it comes back to you " + skipReturn() + ".");
    released.then(() => fill());
  }

  async function undo() {
    const last = undoStack.pop();
    if (!last) { say("Nothing to undo."); return; }
    const labelId = await last.label;
    if (labelId === null || labelId === undefined) { say("The last label was not saved, so there is nothing to undo.", "warn"); return; }
    try {
      await api("POST", "/api/v1/labels/" + labelId + "/retract");
    } catch (err) {
      say("Could not undo: " + err.message, "error");
      return;
    }
    const e = last.entry;
    if (current) queue.unshift(current);
    // The retracted item is free again; it is shown without a lease (labels may be sent without one).
    e.leaseId = null;
    e.expiresAt = null;
    await show(e);
    markPrefetch();
    bump("c-mine", -1);
    bump("c-labelled", -1);
    if (e.eval) bump("c-eval-labelled", -1);
    say("Undone: item " + e.itemId + " is shown again with its label removed.");
    refreshCounters();
  }

  function tickLease() {
    if (!current) return;
    if (!current.leaseId) { leaseLeft.textContent = "none (undone item)"; return; }
    const left = Math.round((current.expiresAt - Date.now()) / 1000);
    if (left <= 0) {
      const e = current;
      doneLeases.add(e.leaseId);
      run(async () => {
        if (current !== e) return;
        await advance();
        say("Your lease on item " + e.itemId + " expired and it went back to the pool; here is the next item.", "warn");
        fill();
      });
      return;
    }
    leaseLeft.textContent = Math.floor(left / 60) + ":" + String(left % 60).padStart(2, "0");
  }
  setInterval(tickLease, 1000);

  // -- prediction panel ----------------------------------------------------------------------------
  function line(text, cls) {
    const p = document.createElement("p");
    p.textContent = text;
    if (cls) p.className = cls;
    return p;
  }
  async function showPrediction(e) {
    predPanel.hidden = false;
    predPanel.replaceChildren(line("Loading the prediction…", "muted"));
    const parts = [];
    parts.push(line("Acquisition score: " + (typeof e.score === "number" ? e.score.toFixed(3) : "none (random order or no model yet)")));
    try {
      const rep = await api("GET", "/api/v1/items/" + e.itemId + "/representation");
      if (current !== e) return;
      if (!rep.predictions) {
        parts.unshift(line("No active model yet: predictions appear after the first retrain.", "muted"));
      } else {
        parts.unshift(line("Model v" + rep.model_version + " predicts:"));
        for (const [name, p] of Object.entries(rep.predictions)) {
          if (p.probs) parts.push(line(name + ": " + p.level + " (" + Math.round(100 * p.probs[p.level]) + "%)"));
          else parts.push(line(name + ": " + Number(p.mean).toFixed(2) + " ± " + Math.sqrt(p.var).toFixed(2)));
        }
      }
    } catch (err) {
      if (current !== e) return;
      parts.unshift(line(err.status === 409 ? "No prediction yet: " + err.message : "Prediction unavailable: " + err.message, "muted"));
    }
    predPanel.replaceChildren(...parts);
  }
  predToggle.addEventListener("change", () => {
    if (predToggle.checked && current) showPrediction(current);
    else predPanel.hidden = true;
  });

  // -- keyboard ------------------------------------------------------------------------------------
  document.getElementById("submit-btn").addEventListener("click", (ev) => { ev.preventDefault(); run(submit); });
  form.addEventListener("submit", (ev) => ev.preventDefault());
  document.getElementById("skip-btn").addEventListener("click", () => run(skip));
  document.getElementById("undo-btn").addEventListener("click", () => run(undo));

  document.addEventListener("keydown", (ev) => {
    if (ev.ctrlKey || ev.metaKey || ev.altKey || ev.isComposing) return;
    const t = ev.target;
    const typing = t instanceof HTMLInputElement && t.type !== "checkbox";
    if (ev.key === "Enter") {
      if (t instanceof HTMLElement && t.tagName === "SUMMARY") return;
      ev.preventDefault();
      if (!ev.repeat) run(submit);
      return;
    }
    if (typing) {
      if (ev.key === "Escape") { t.blur(); ev.preventDefault(); }
      return;
    }
    const key = ev.key.length === 1 ? ev.key.toLowerCase() : ev.key;
    const a = attrs[active];
    let handled = true;
    if (key === "s") run(skip);
    else if (key === "z" || key === "Backspace") run(undo);
    else if (key === "p") { predToggle.checked = !predToggle.checked; predToggle.dispatchEvent(new Event("change")); }
    else if (key === "ArrowDown") setActive(active + 1);
    else if (key === "ArrowUp") setActive(active - 1);
    else if (key === "-") choose(active, null);
    else if (a && a.kind === "continuous" && /^[0-9.]$/.test(key)) {
      const number = fieldsets[active].querySelector('[data-role="number"]');
      number.focus();
      number.value = key;
      number.dispatchEvent(new Event("input"));
    } else if (a && a.kind === "continuous" && (key === "ArrowLeft" || key === "ArrowRight")) {
      const slider = fieldsets[active].querySelector('[data-role="slider"]');
      if (key === "ArrowLeft") slider.stepDown(); else slider.stepUp();
      slider.dispatchEvent(new Event("input"));
    } else if (a && a.kind !== "continuous") {
      const b = fieldsets[active].querySelector('button.level[data-key="' + CSS.escape(key) + '"]');
      if (b) choose(active, b.dataset.value);
      else handled = false;
    } else handled = false;
    if (handled) ev.preventDefault();
  });

  // -- start ---------------------------------------------------------------------------------------
  setActive(0);
  run(async () => { await fill(); await advance(); });
})();
