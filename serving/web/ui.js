/* ecgfm-serve: the page at /ui. A record file goes to POST /decode (what the service reads from it), its signal to
 * POST /clinical (ECG-FM's 17 probabilities), again to POST /clinical with "saliency": true (where the model
 * attended: drawn over the tracing only; the numbers shown are the plain request's) and both to POST /interpret
 * (heart rate and its R peaks, findings, severity), and to POST /probes/<name> for each probe GET /probes lists
 * (probes fit at this site on ECG-FM's embeddings); the page draws and lists what they answer, and shows their
 * errors as they word them. Every request goes to this origin, with the API key (kept in sessionStorage) as the
 * Bearer header when one is set. No library, nothing to build. */
"use strict";

(function () {
  const KEY_STORE = "ecgfm-api-key";
  const GROUP_ORDER = ["Rhythm", "Conduction", "Ischemia", "Structural", "Other"];
  const SAMPLES = [ // sample_data/ (served under /ui/samples/)
    { label: "JS36330 · sinus rhythm · JSON, 500 Hz", files: ["JS36330.json"] },
    { label: "JS36330 · the same as WFDB (.hea + .mat)", files: ["JS36330.hea", "JS36330.mat"] },
    { label: "JS36330 · the same as CSV (500 Hz)", files: ["JS36330.csv"], fs: 500 },
    { label: "JS36330 · the same as NumPy .npy (500 Hz)", files: ["JS36330.npy"], fs: 500 },
    { label: "JS06908 · sinus tachycardia, nonspecific ST-T · JSON", files: ["JS06908.json"] },
    { label: "JS01048 · sinus bradycardia · JSON", files: ["JS01048.json"] },
    { label: "A1041 · atrial fibrillation, LBBB · JSON, 17 s", files: ["A1041.json"] },
    { label: "PTB s0010_re · myocardial infarction · JSON, 1000 Hz", files: ["ptbdb_s0010_re_first10s.json"] },
  ];

  const $ = (id) => document.getElementById(id);
  let run = 0; // the latest analysis; answers to older ones are dropped
  let current = null; // the decoded record on screen, redrawn on resize
  // what is drawn over it: the window's start (s), the saliency band and its state, the interpreter's heart rate
  let view = { start: 0, band: null, saliency: "pending", peaks: null };

  class ApiError extends Error {
    constructor(route, status, body) {
      super(body && typeof body.error === "string" ? body.error : `HTTP ${status}`);
      this.route = route;
      this.status = status;
      this.body = body;
    }
  }

  function apiKey() { return sessionStorage.getItem(KEY_STORE) || ""; }

  async function call(route, options = {}) {
    const headers = new Headers(options.headers || {});
    if (apiKey()) headers.set("Authorization", `Bearer ${apiKey()}`);
    const response = await fetch(route, { ...options, headers, credentials: "omit", cache: "no-store" });
    const text = await response.text();
    let body = null;
    try { body = text ? JSON.parse(text) : null; } catch (e) { body = { error: text }; }
    if (!response.ok) throw new ApiError(route.split("?")[0], response.status, body);
    return body;
  }

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) {
      if (name === "class") node.className = value;
      else if (name === "text") node.textContent = value;
      else node.setAttribute(name, value);
    }
    for (const child of children) node.append(child);
    return node;
  }

  function setProgress(text) { $("progress").textContent = text; }

  function showError(err) {
    const box = $("error");
    box.replaceChildren();
    if (err instanceof ApiError) {
      box.append(el("p", { class: "where", text: `POST ${err.route} answered ${err.status}` }));
      if (err.route === "/info") box.firstChild.textContent = `GET /info answered ${err.status}`;
      box.append(el("p", { class: "api-message", text: err.message }));
      for (const item of (err.body && Array.isArray(err.body.detail) ? err.body.detail : [])) {
        box.append(el("p", { class: "api-detail", text: `${(item.loc || []).join(".")}: ${item.msg}` }));
      }
      if (err.status === 401) {
        box.append(el("p", { class: "hint", text: "Enter the service's API key under “API key” above." }));
        $("key-box").open = true;
      }
    } else {
      box.append(el("p", { class: "api-message", text: `The service could not be reached: ${err.message}` }));
    }
    box.hidden = false;
  }

  function clearResults() {
    $("error").hidden = true;
    $("error").replaceChildren();
    $("results").hidden = true;
    current = null;
    view = { start: 0, band: null, saliency: "pending", peaks: null };
  }

  // ---- rendering ----------------------------------------------------------------------------------------------

  const seconds = (t) => String(+t.toFixed(2));

  function drawTracing() {
    if (!current) return;
    const canvas = $("ecg");
    const width = canvas.parentElement.clientWidth - 2;
    const shade = view.saliency === "shown" ? view.band : null;
    const drawn = window.ECGTracing.draw(canvas, current, width, { start: view.start, band: shade, peaks: view.peaks });
    const total = current.duration_s;
    $("tracing-caption").textContent = total > drawn.shownSeconds + 1e-9
      ? `· ${seconds(drawn.start)}–${seconds(drawn.end)} s of ${total} s` : `· ${total} s`;
    $("window-out").textContent = `${seconds(drawn.start)}–${seconds(drawn.end)} s of ${total} s`;
    $("window-earlier").disabled = drawn.start <= 0;
    $("window-later").disabled = drawn.end >= drawn.total - 1e-9;
    canvas.dataset.windowStart = String(drawn.start);
    canvas.dataset.windowEnd = String(drawn.end);
    canvas.dataset.saliency = view.saliency;
    canvas.dataset.rPeaks = String(drawn.peaks.filter((mark) => mark.row === "rhythm").length);
    canvas.setAttribute("aria-label", `12-lead ECG tracing of record ${current.name}, ${current.lead_names.length}`
      + ` leads at ${current.fs} Hz, ${seconds(drawn.start)} to ${seconds(drawn.end)} s`
      + (shade ? ", shaded where the model attended" : "") + "; the numbers are listed below.");
  }

  /** The window control: shown for a record longer than the 10 s the layout holds. */
  function setUpWindow(decoded) {
    const strip = window.ECGTracing.STRIP_S;
    const slider = $("window-start");
    const room = Math.max(0, decoded.duration_s - strip);
    slider.max = String(Math.ceil(room * 10) / 10);
    slider.value = "0";
    $("window-box").hidden = room <= 1e-9;
  }

  function moveWindow(start) {
    if (!current) return;
    const room = Math.max(0, current.duration_s - window.ECGTracing.STRIP_S);
    view.start = Math.max(0, Math.min(start, room));
    $("window-start").value = String(view.start);
    drawTracing();
  }

  function showSaliency(clinical) {
    const saliency = clinical && clinical.saliency;
    if (!saliency || !Array.isArray(saliency.values)) {
      saliencyUnavailable("the answer of POST /clinical had no saliency");
      return;
    }
    view.band = window.ECGTracing.saliencyBand(saliency, current.duration_s);
    view.saliency = $("show-saliency").checked ? "shown" : "hidden";
    const band = view.band;
    $("saliency-range").textContent = `(values ${band.min.toFixed(4)} to ${band.max.toFixed(4)} over the record)`;
    const tail = current.duration_s - band.end;
    $("saliency-tail").textContent = tail > 0.05 // a record's tail shorter than 5 s is not given to the model
      ? `No shading after ${seconds(band.end)} s: the model reads whole 5 s segments, and the last`
        + ` ${seconds(tail)} s were not part of one.` : "";
    $("show-saliency").disabled = false;
    $("saliency-legend").hidden = view.saliency !== "shown";
    $("saliency-state").textContent = "";
    drawTracing();
  }

  function saliencyUnavailable(why) {
    view.band = null;
    view.saliency = "unavailable";
    $("show-saliency").disabled = true;
    $("saliency-legend").hidden = true;
    $("saliency-tail").textContent = "";
    $("saliency-state").textContent = `Saliency is unavailable: ${why}. The tracing and the numbers are not affected.`;
    drawTracing();
  }

  function showPeaks(report) {
    const hr = report.heart_rate;
    view.peaks = hr && Array.isArray(hr.r_peaks) && hr.r_peaks.length ? hr : null;
    $("peaks-note").hidden = !view.peaks;
    if (view.peaks) {
      $("peaks-text").textContent = ` R peaks: the ${hr.r_peaks.length} beats the interpreter detected in lead`
        + ` ${hr.lead} (the heart rate's), marked on the rhythm strip and on ${hr.lead}'s panel.`;
    }
    drawTracing();
  }

  function fact(list, term, value) {
    list.append(el("dt", { text: term }), el("dd", { text: value }));
  }

  const listOr = (items, none = "none") => (items && items.length ? items.join(", ") : none);

  function renderRecord(decoded, clinical) {
    const facts = $("record-facts");
    facts.replaceChildren();
    fact(facts, "Record", decoded.name);
    fact(facts, "Format", decoded.format);
    fact(facts, "Sampling rate", `${decoded.fs} Hz`);
    fact(facts, "Duration", `${decoded.duration_s} s (${decoded.n_samples} samples)`);
    fact(facts, "Leads given to the model", decoded.lead_names.join(", "));
    const conv = decoded.conversion;
    if (conv) {
      fact(facts, "Units in the file", `${conv.units_in_file} → ${conv.units} (${conv.scaling})`);
      if (conv.version) fact(facts, "Format version", conv.version);
      fact(facts, "Lead labels in the file", listOr(conv.lead_labels_in_file));
      fact(facts, "Derived leads (computed, not read)", listOr(conv.derived_leads));
      fact(facts, "Leads beyond the 12 (left out of the model)", listOr(conv.extra_leads));
      fact(facts, "Trimmed", listOr((conv.trimmed || []).map((t) => `${t.what}, ${t.start_s}–${t.end_s} s`)));
      if (conv.notes && conv.notes.length) fact(facts, "Conversion notes", conv.notes.join(" "));
    } else {
      fact(facts, "Derived or trimmed", "nothing: read as stored");
    }
    if (!clinical) return;
    fact(facts, "Segments", `${clinical.n_segments} × 5 s, ${clinical.used_duration_s} s used of ${clinical.duration_s} s`
      + (clinical.padded ? " (shorter than 5 s: zero-padded, the padding masked)" : ""));
    fact(facts, "Constant leads (set to 0)", listOr(clinical.constant_leads));
    const ckpt = clinical.checkpoint || {};
    fact(facts, "Weights", `${ckpt.filename || ckpt.origin || "?"}${ckpt.sha256 ? ` (sha256 ${ckpt.sha256.slice(0, 12)}…)` : ""}`
      + (clinical.demo ? " — demo weights" : ""));
  }

  function renderProbabilities(clinical) {
    const rows = Object.entries(clinical.probabilities).sort((a, b) => b[1] - a[1]);
    const body = $("prob-table").tBodies[0];
    body.replaceChildren();
    for (const [label, p] of rows) {
      const fill = el("span", { class: "fill" });
      fill.style.width = `${(p * 100).toFixed(2)}%`; // CSSOM, allowed by the page's style-src 'self'
      body.append(el("tr", { "data-label": label },
        el("th", { scope: "row", text: label }),
        el("td", { class: "num", "data-probability": String(p), title: String(p), text: p.toFixed(4) }),
        el("td", { class: "bar-cell", "aria-hidden": "true" }, el("span", { class: "bar" }, fill))));
    }
    const table = $("segment-table");
    table.replaceChildren();
    const segments = clinical.segments || [];
    const head = el("tr", {}, el("th", { scope: "col", text: "label" }), el("th", { scope: "col", text: "record" }));
    segments.forEach((_, i) => head.append(el("th", { scope: "col", text: `${i * 5}–${i * 5 + 5} s` })));
    table.append(el("thead", {}, head));
    const labels = Object.keys(clinical.probabilities);
    const tbody = el("tbody");
    for (const [label, p] of rows) {
      const tr = el("tr", {}, el("th", { scope: "row", text: label }), el("td", { class: "num", text: p.toFixed(4) }));
      segments.forEach((seg) => tr.append(el("td", { class: "num", text: seg[labels.indexOf(label)].toFixed(4) })));
      tbody.append(tr);
    }
    table.append(tbody);
  }

  // One table per loaded probe (GET /probes): its targets' probabilities for the record (POST /probes/<name>) and
  // its cross-validated AUROC; a probe that fails says so in its place. No probes loaded: the section stays hidden.
  async function renderProbes(record, mine) {
    const listed = await call("/probes");
    if (mine !== run || !listed.probes.length) return;
    const holder = $("probes");
    holder.replaceChildren();
    $("probes-card").hidden = false;
    for (const probe of listed.probes) {
      const summary = probe.summary || {};
      const table = el("table", { class: "prob-table probe-table", "data-probe": probe.name });
      table.append(el("caption", { text: `${probe.name}${probe.demo ? " (demo weights)" : ""} — fit on `
        + `${summary.records ?? "?"} records` }));
      const body = el("tbody");
      table.append(body);
      holder.append(table);
      try {
        const answer = await call(`/probes/${encodeURIComponent(probe.name)}`, {
          method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(record),
        });
        if (mine !== run) return;
        for (const target of answer.probe.targets) {
          const p = answer.probe.probabilities[target];
          const auroc = ((summary.targets || {})[target] || {}).cv_auroc;
          body.append(el("tr", { "data-target": target },
            el("th", { scope: "row", text: target }),
            el("td", { class: "num", "data-probability": String(p), title: String(p), text: p.toFixed(4) }),
            el("td", { class: "help", text: auroc === undefined ? "" : `cross-validated AUROC ${auroc.toFixed(3)}` })));
        }
      } catch (err) {
        if (mine !== run) return;
        body.append(el("tr", {}, el("td", { class: "error", text: err instanceof ApiError
          ? `POST /probes/${probe.name} answered ${err.status} (${err.message})` : String(err.message) })));
      }
    }
  }

  function renderInterpretation(report) {
    const hr = report.heart_rate;
    const bpm = hr && typeof hr.heart_rate_bpm === "number" ? hr.heart_rate_bpm : null;
    $("heart-rate").textContent = bpm === null ? "not measured" : `${Math.round(bpm)} bpm`;
    $("heart-rate").dataset.bpm = bpm === null ? "" : String(bpm);
    $("hr-detail").textContent = !hr ? "" : `${hr.n_beats} beats detected in lead ${hr.lead}; signal quality ${hr.quality}`
      + (hr.quality_reasons && hr.quality_reasons.length ? ` (${hr.quality_reasons.join("; ")})` : "")
      + (typeof hr.rr_cv === "number" ? `; RR variation ${hr.rr_cv.toFixed(3)}${hr.irregular ? ", irregular" : ""}` : "")
      + (report.rate_severity ? `; rate band ${report.rate_severity}` : "") + ".";
    const sev = $("severity");
    sev.textContent = report.severity;
    sev.className = `sev sev-${report.severity}`;
    const groups = $("groups");
    groups.replaceChildren();
    for (const group of GROUP_ORDER) {
      const findings = report.findings.filter((f) => f.group === group);
      const section = el("div", { class: "group" }, el("h3", { text: group }));
      if (!findings.length) section.append(el("p", { class: "none", text: "nothing reported" }));
      const list = el("ul", { class: "finding-list" });
      for (const f of findings) {
        const p = f.probability === null ? "n/a" : f.probability.toFixed(2);
        const item = el("li", { class: "finding", "data-label": f.label },
          el("span", { class: "finding-label", text: f.label }), " ",
          el("span", { class: `status status-${f.status}`, text: f.status }), " ",
          el("span", { class: `sev sev-${f.severity}`, text: f.severity }),
          el("span", { class: "finding-meta", text: ` p = ${p} (threshold ${f.threshold}) · ${f.source} · rules ` }),
          el("span", { class: "rules", text: f.rules.join(", ") }));
        for (const note of f.notes) item.append(el("span", { class: "finding-note", text: note }));
        list.append(item);
      }
      if (findings.length) section.append(list);
      groups.append(section);
    }
    $("reasons").replaceChildren(...(report.severity_reasons.length ? report.severity_reasons : ["no finding above normal"])
      .map((r) => el("li", { text: r })));
    const notes = [...report.discordances, ...report.notes];
    $("notes").replaceChildren(...notes.map((n) => el("li", { text: n })));
    $("notes-box").hidden = !notes.length;
    $("disclaimer").textContent = report.disclaimer;
  }

  function showDemo(demo) { if (demo) $("demo-banner").hidden = false; }

  // ---- the analysis -------------------------------------------------------------------------------------------

  async function analyze(files, fs) {
    const mine = ++run;
    let failed = false;
    clearResults();
    const names = files.map((f) => f.name).join(" + ");
    try {
      setProgress(`Reading ${names} …`);
      const form = new FormData();
      for (const file of files) form.append("file", file, file.name);
      const query = fs ? `?fs=${encodeURIComponent(fs)}` : "";
      const decoded = await call(`/decode${query}`, { method: "POST", body: form });
      if (mine !== run) return;
      current = decoded;
      $("results").hidden = false;
      $("prob-table").tBodies[0].replaceChildren();
      $("probes").replaceChildren();
      $("probes-card").hidden = true;
      $("groups").replaceChildren();
      $("peaks-note").hidden = true;
      $("saliency-legend").hidden = true;
      $("saliency-tail").textContent = "";
      $("saliency-state").textContent = "Saliency: asking the model where it attended …";
      setUpWindow(decoded);
      drawTracing();
      renderRecord(decoded, null);
      setProgress(`Running ECG-FM on ${decoded.name} …`);
      const record = { signal: decoded.signal, fs: decoded.fs, lead_names: decoded.lead_names };
      const json = { "Content-Type": "application/json" };
      // Its own request: the saliency forward differs from the plain one by ~1e-7, and the numbers shown must be
      // the plain /clinical answer. A failure here leaves the rest of the page as it is.
      const saliency = call("/clinical", {
        method: "POST", headers: json, body: JSON.stringify({ ...record, saliency: true }),
      }).then((answer) => { if (mine === run && !failed) showSaliency(answer); }, (err) => {
        if (mine !== run || failed) return; // when the analysis itself failed, its error is the one to read
        saliencyUnavailable(err instanceof ApiError ? `POST /clinical answered ${err.status} (${err.message})`
          : `the service could not be reached (${err.message})`);
      });
      const clinical = await call("/clinical", {
        method: "POST", headers: json, body: JSON.stringify({ ...record, per_segment: true }),
      });
      if (mine !== run) return;
      showDemo(clinical.demo);
      renderProbabilities(clinical);
      renderRecord(decoded, clinical);
      setProgress(`Interpreting ${decoded.name} …`);
      const report = await call("/interpret", {
        method: "POST", headers: json,
        body: JSON.stringify({ ...record, probabilities: clinical.probabilities, record: decoded.name }),
      });
      if (mine !== run) return;
      renderInterpretation(report);
      showPeaks(report);
      await renderProbes(record, mine);
      if (view.saliency === "pending") setProgress(`${decoded.name}: working out where the model attended …`);
      await saliency;
      if (mine !== run) return;
      setProgress(`${decoded.name}: done.`);
      document.body.dataset.state = "done";
    } catch (err) {
      if (mine !== run) return;
      failed = true;
      $("saliency-state").textContent = "";
      setProgress("");
      showError(err);
      document.body.dataset.state = "error";
    }
  }

  async function loadSample(sample) {
    const mine = ++run;
    clearResults();
    try {
      setProgress(`Fetching the sample ${sample.files.join(" + ")} …`);
      const files = [];
      for (const name of sample.files) {
        const headers = apiKey() ? { Authorization: `Bearer ${apiKey()}` } : {};
        const response = await fetch(`/ui/samples/${encodeURIComponent(name)}`, { headers, cache: "no-store" });
        if (!response.ok) {
          let body = null;
          try { body = await response.json(); } catch (e) { body = null; }
          throw new ApiError(`/ui/samples/${name}`, response.status, body);
        }
        files.push(new File([await response.blob()], name));
      }
      if (mine !== run) return;
      if (sample.fs) $("fs").value = String(sample.fs);
      await analyze(files, sample.fs || $("fs").value);
    } catch (err) {
      if (mine !== run) return;
      setProgress("");
      showError(err);
    }
  }

  async function loadInfo() {
    try {
      const info = await call("/info");
      $("version").textContent = info.versions ? info.versions["ecgfm-serve"] : "";
      showDemo(info.demo);
    } catch (err) {
      showError(err);
    }
  }

  // ---- wiring -------------------------------------------------------------------------------------------------

  function start() {
    const select = $("sample");
    SAMPLES.forEach((sample, i) => select.append(el("option", { value: String(i), text: sample.label })));
    $("sample-load").addEventListener("click", () => {
      if (select.value !== "") loadSample(SAMPLES[Number(select.value)]);
    });
    $("file").addEventListener("change", () => {
      const files = Array.from($("file").files);
      if (files.length) analyze(files, $("fs").value);
    });
    $("fs").addEventListener("change", () => { // a new rate reads the chosen file again (a .csv or .npy, say)
      const files = Array.from($("file").files);
      if (files.length) analyze(files, $("fs").value);
    });
    const drop = $("drop");
    drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
    drop.addEventListener("dragleave", () => drop.classList.remove("over"));
    drop.addEventListener("drop", (e) => {
      e.preventDefault();
      drop.classList.remove("over");
      const files = Array.from(e.dataTransfer.files);
      if (files.length) analyze(files, $("fs").value);
    });
    $("api-key").value = apiKey();
    $("key-save").addEventListener("click", () => {
      sessionStorage.setItem(KEY_STORE, $("api-key").value.trim());
      $("error").hidden = true;
      setProgress($("api-key").value.trim() ? "The key will be sent with every request." : "");
      loadInfo();
    });
    $("api-key").addEventListener("keydown", (e) => { if (e.key === "Enter") $("key-save").click(); });
    $("key-clear").addEventListener("click", () => {
      sessionStorage.removeItem(KEY_STORE);
      $("api-key").value = "";
      setProgress("The key is forgotten.");
    });
    $("window-start").addEventListener("input", () => moveWindow(Number($("window-start").value)));
    $("window-earlier").addEventListener("click", () => moveWindow(view.start - window.ECGTracing.STRIP_S));
    $("window-later").addEventListener("click", () => moveWindow(view.start + window.ECGTracing.STRIP_S));
    $("show-saliency").addEventListener("change", () => {
      if (view.saliency !== "shown" && view.saliency !== "hidden") return;
      view.saliency = $("show-saliency").checked ? "shown" : "hidden";
      $("saliency-legend").hidden = view.saliency !== "shown";
      drawTracing();
    });
    let resizing = 0;
    window.addEventListener("resize", () => {
      clearTimeout(resizing);
      resizing = setTimeout(drawTracing, 150);
    });
    loadInfo();
  }

  document.addEventListener("DOMContentLoaded", start);
})();
