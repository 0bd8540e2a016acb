// Shared behaviour of the pages (no inline scripts: the CSP allows only files from this origin).
// - htmx requests carry the session's CSRF token;
// - job rows follow their job over SSE (htmx-ext-sse), falling back to polling the row fragment;
// - the project form's attribute editor adds and removes rows.
"use strict";
(function () {
  const csrfMeta = document.querySelector('meta[name="csrf-token"]');
  const csrf = csrfMeta ? csrfMeta.content : "";
  const TERMINAL = ["succeeded", "failed", "cancelled"];

  function fmtDuration(s) {
    if (s === null || s === undefined || !isFinite(s)) return "—";
    s = Math.max(0, Math.round(s));
    if (s >= 3600) return Math.floor(s / 3600) + " h " + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + " min";
    if (s >= 60) return Math.floor(s / 60) + " min " + String(s % 60).padStart(2, "0") + " s";
    return s + " s";
  }

  function updateJobRow(row, job) {
    const pct = Math.round(100 * Math.max(0, Math.min(1, Number(job.progress) || 0)));
    const bar = row.querySelector("progress");
    if (bar) { bar.value = pct; bar.textContent = pct + "%"; }
    const set = (sel, text) => { const el = row.querySelector(sel); if (el) el.textContent = text; };
    set("[data-field=status]", job.status);
    set("[data-field=percent]", pct + "%");
    // Missing figures in words (the row template says the same): what the job is waiting for.
    const queued = job.status === "queued", running = job.status === "running";
    set("[data-field=stage]", job.stage || (queued ? "waiting for a worker" : running ? "starting" : "none"));
    const eta = job.eta_seconds;
    set("[data-field=eta]", eta === null || eta === undefined || !isFinite(eta)
      ? (queued ? "once started" : running ? "estimating" : "none") : fmtDuration(eta));
    set("[data-field=loss]", job.loss === null || job.loss === undefined
      ? (queued || running ? "not yet" : "none (no training step)") : Number(job.loss).toFixed(4));
    set("[data-field=message]", job.message || "");
    row.dataset.jobStatus = job.status;
  }

  function refreshRow(row) {
    if (!window.htmx || !row.isConnected) return;
    htmx.ajax("GET", row.dataset.rowUrl + "?mode=poll", { target: row, swap: "outerHTML" });
  }

  if (window.htmx) {
    document.addEventListener("htmx:configRequest", (ev) => {
      if (csrf) ev.detail.headers["X-CSRF-Token"] = csrf;
    });

    // SSE: each message is the job as JSON; the last one has a terminal status, then the server closes.
    document.addEventListener("htmx:sseMessage", (ev) => {
      const row = ev.target.closest("[data-job-row]");
      if (!row) return;
      let job;
      try { job = JSON.parse(ev.detail.data); } catch (e) { return; }
      updateJobRow(row, job);
      if (TERMINAL.includes(job.status)) {
        if (ev.detail.target && ev.detail.target.close) ev.detail.target.close();
        refreshRow(row);
        document.body.dispatchEvent(new CustomEvent("jobs-changed", { bubbles: true }));
      }
    });
    document.addEventListener("htmx:sseOpen", (ev) => {
      const row = ev.target.closest("[data-job-row]");
      if (row) row.dataset.live = "sse";
    });
    document.addEventListener("htmx:sseError", (ev) => {
      // No stream (e.g. a server without the events endpoint) or it broke: poll the row instead.
      const row = ev.target.closest("[data-job-row]");
      const source = ev.detail && ev.detail.source;
      if (!row || !source || source.readyState !== EventSource.CLOSED || row.dataset.live === "poll") return;
      source.close();
      row.dataset.live = "poll";
      if (!TERMINAL.includes(row.dataset.jobStatus)) refreshRow(row);
    });
    // A polled row that reaches a terminal status tells the model table to refresh.
    document.addEventListener("htmx:afterSwap", (ev) => {
      const row = ev.detail.target;
      if (row && row.matches && row.matches("[data-job-row]") && TERMINAL.includes(row.dataset.jobStatus)) {
        document.body.dispatchEvent(new CustomEvent("jobs-changed", { bubbles: true }));
      }
    });
  }

  // Attribute editor: "Add attribute" clones the template row; "Remove" drops a row.
  const editor = document.getElementById("attribute-editor");
  if (editor) {
    const tpl = document.getElementById("attribute-row-template");
    const rows = editor.querySelector("[data-rows]");
    const sync = (row) => {
      const kind = row.querySelector("[name=attr_kind]").value;
      row.querySelectorAll("[data-when]").forEach((el) => { el.hidden = !el.dataset.when.split(" ").includes(kind); });
    };
    rows.querySelectorAll("[data-attr-row]").forEach(sync);
    editor.addEventListener("change", (ev) => {
      const row = ev.target.closest("[data-attr-row]");
      if (row && ev.target.name === "attr_kind") sync(row);
    });
    editor.addEventListener("click", (ev) => {
      const btn = ev.target.closest("button[data-action]");
      if (!btn) return;
      if (btn.dataset.action === "add") {
        const row = tpl.content.firstElementChild.cloneNode(true);
        rows.appendChild(row);
        sync(row);
        row.querySelector("input").focus();
      } else if (btn.dataset.action === "remove") {
        const row = btn.closest("[data-attr-row]");
        if (rows.querySelectorAll("[data-attr-row]").length > 1) row.remove();
      }
    });
  }

  // Data-source fields: show the ones the chosen source uses.
  document.querySelectorAll("[data-source-form]").forEach((formEl) => {
    const select = formEl.querySelector("[name=source]");
    const sync = () => {
      formEl.querySelectorAll("[data-sources]").forEach((el) => {
        el.hidden = !el.dataset.sources.split(" ").includes(select.value);
      });
    };
    select.addEventListener("change", sync);
    sync();
  });
})();
