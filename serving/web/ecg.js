/* ecgfm-serve: the 12-lead tracing of the page at /ui, drawn on a <canvas> (no library).
 *
 * Standard layout: three rows of four columns (I aVR V1 V4 / II aVL V2 V5 / III aVF V3 V6), each column 2.5 s of
 * its leads, then a 10 s lead II rhythm strip; 25 mm/s and 10 mm/mV on the pink grid (1 mm minor, 5 mm major
 * lines), a 1 mV calibration pulse at the start of each row. Each lead's median (over the 10 s drawn) is taken
 * off so that a baseline offset in the file does not push the trace off its row.
 *
 * A 10 s window of a longer record (`start` s onwards) is drawn in the same layout. Over it, when given: the
 * saliency band (`saliencyBand`: ECG-FM's attention per 32 ms step, one colour scale over the whole record, shaded
 * behind every row) and the interpreter's R peaks (a mark above each beat on the rhythm strip and on the panel of
 * the lead they were detected in). `last` keeps what the latest call drew (the window, each panel's label and
 * the range of its trace, the saliency spans, the R-peak marks), for the page and its tests. */
"use strict";

window.ECGTracing = (function () {
  const LAYOUT = [
    ["I", "aVR", "V1", "V4"],
    ["II", "aVL", "V2", "V5"],
    ["III", "aVF", "V3", "V6"],
  ];
  const RHYTHM_LEAD = "II";
  const MM_PER_S = 25;
  const MM_PER_MV = 10;
  const COLUMN_S = 2.5;
  const STRIP_S = 10;
  const LEFT_MM = 10; // room for the calibration pulse
  const ROW_MM = 35;
  const TOP_MM = 2;
  const WIDTH_MM = LEFT_MM + STRIP_S * MM_PER_S + 2;
  const HEIGHT_MM = TOP_MM + 4 * ROW_MM + 2;
  const MIN_PX_PER_MM = 3; // below this the grid cannot be read: the tracing scrolls sideways instead
  const COLOURS = { paper: "#ffffff", minor: "#f7cdd5", major: "#e58a9d", trace: "#111111", text: "#5b0d1f",
    peak: "#0b4fa8" };
  const SALIENCY_RGB = "0, 118, 110"; // teal: apart from the pink grid; ui.css's legend uses the same colour
  const SALIENCY_MAX_ALPHA = 0.45; // the record's most attended step; its least attended is not shaded
  const EPS = 1e-9;

  /** The whole record's saliency as spans on its time axis: step i of segment k covers
   * [segment_start_s[k] + i·step_s, + step_s), cut at `duration` (the steps of a padded short record after its end
   * are left out). `level` is the value on one scale over every span drawn: (value − min) / (max − min). */
  function saliencyBand(saliency, duration) {
    const spans = [];
    saliency.values.forEach((row, k) => {
      const origin = saliency.segment_start_s[k];
      row.forEach((value, i) => {
        const start = origin + i * saliency.step_s;
        if (start >= duration - EPS) return;
        spans.push({ start, end: Math.min(start + saliency.step_s, duration), value, segment: k, step: i });
      });
    });
    let min = Infinity;
    let max = -Infinity;
    for (const span of spans) { min = Math.min(min, span.value); max = Math.max(max, span.value); }
    const range = max - min;
    for (const span of spans) span.level = range > 0 ? (span.value - min) / range : 0.5; // all equal: no contrast
    return { spans, min, max, end: spans.length ? spans[spans.length - 1].end : 0 };
  }

  let last = null;

  function median(values) {
    if (!values.length) return 0;
    const sorted = Float64Array.from(values).sort();
    const mid = sorted.length >> 1;
    return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
  }

  function leadIndex(leadNames) {
    const index = {};
    leadNames.forEach((name, i) => { index[name.toLowerCase()] = i; });
    return index;
  }

  function drawGrid(ctx, k) {
    ctx.fillStyle = COLOURS.paper;
    ctx.fillRect(0, 0, WIDTH_MM * k, HEIGHT_MM * k);
    for (const [step, colour, width] of [[1, COLOURS.minor, 0.6], [5, COLOURS.major, 1]]) {
      ctx.strokeStyle = colour;
      ctx.lineWidth = width;
      ctx.beginPath();
      for (let mm = 0; mm <= WIDTH_MM; mm += step) {
        ctx.moveTo(Math.round(mm * k) + 0.5, 0);
        ctx.lineTo(Math.round(mm * k) + 0.5, HEIGHT_MM * k);
      }
      for (let mm = 0; mm <= HEIGHT_MM; mm += step) {
        ctx.moveTo(0, Math.round(mm * k) + 0.5);
        ctx.lineTo(WIDTH_MM * k, Math.round(mm * k) + 0.5);
      }
      ctx.stroke();
    }
  }

  function drawCalibration(ctx, k, baseline) {
    const x0 = 2 * k;
    ctx.beginPath();
    ctx.moveTo(x0, baseline);
    ctx.lineTo(x0 + 1 * k, baseline);
    ctx.lineTo(x0 + 1 * k, baseline - MM_PER_MV * k);
    ctx.lineTo(x0 + 6 * k, baseline - MM_PER_MV * k); // 0.2 s = 5 mm
    ctx.lineTo(x0 + 6 * k, baseline);
    ctx.lineTo(x0 + 7 * k, baseline);
    ctx.stroke();
  }

  /** Lead `samples` over [t0, t1) of the window that starts at `start` s of the record. Returns what was plotted:
   * the samples [first, end) and the lowest and highest value drawn (mV above the lead's median), or null. */
  function drawSpan(ctx, k, samples, fs, offset, start, t0, t1, baseline) {
    const first = Math.max(0, Math.floor((start + t0) * fs + EPS));
    const end = Math.min(samples.length, Math.ceil((start + t1) * fs - EPS));
    if (end - first < 2) return null;
    let low = Infinity;
    let high = -Infinity;
    ctx.beginPath();
    for (let i = first; i < end; i++) {
      const mv = samples[i] - offset;
      low = Math.min(low, mv);
      high = Math.max(high, mv);
      const x = (LEFT_MM + (i / fs - start) * MM_PER_S) * k;
      const y = baseline - mv * MM_PER_MV * k;
      if (i === first) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    }
    ctx.stroke();
    return { first, end, low, high };
  }

  /** Shade each span of `band` that falls in [t0, t1) of the window starting at `start`, over one row. */
  function drawSaliency(ctx, k, band, start, t0, t1, rowTop) {
    const drawn = [];
    for (const span of band.spans) {
      const a = Math.max(span.start, start + t0);
      const b = Math.min(span.end, start + t1);
      if (b <= a + EPS) continue;
      ctx.fillStyle = `rgba(${SALIENCY_RGB}, ${(span.level * SALIENCY_MAX_ALPHA).toFixed(3)})`;
      const x0 = (LEFT_MM + (a - start) * MM_PER_S) * k;
      const x1 = (LEFT_MM + (b - start) * MM_PER_S) * k;
      ctx.fillRect(x0, rowTop, x1 - x0, ROW_MM * k);
      drawn.push(span);
    }
    return drawn;
  }

  /** A mark above the trace at each R peak (`samples`, at the record's rate) in [t0, t1) of the window. */
  function drawPeaks(ctx, k, samples, peaks, fs, offset, start, t0, t1, baseline, rowTop) {
    const marks = [];
    const half = Math.round(0.04 * fs);
    ctx.fillStyle = COLOURS.peak;
    for (const sample of peaks) {
      const t = sample / fs - start;
      if (t < t0 - EPS || t >= t1 - EPS) continue;
      let top = Infinity; // the highest point of the trace around the peak, so that the mark sits above the beat
      for (let i = Math.max(0, sample - half); i <= Math.min(samples.length - 1, sample + half); i++) {
        top = Math.min(top, baseline - (samples[i] - offset) * MM_PER_MV * k);
      }
      const x = (LEFT_MM + t * MM_PER_S) * k;
      const y = Math.max(rowTop + 2 * k, Math.min(baseline, top) - 1 * k);
      ctx.beginPath();
      ctx.moveTo(x, y);
      ctx.lineTo(x - 1.1 * k, y - 1.8 * k);
      ctx.lineTo(x + 1.1 * k, y - 1.8 * k);
      ctx.closePath();
      ctx.fill();
      marks.push({ sample, t: sample / fs });
    }
    return marks;
  }

  function label(ctx, k, text, t, rowTop) {
    ctx.fillStyle = COLOURS.text;
    ctx.font = `600 ${Math.max(11, 3.2 * k)}px system-ui, sans-serif`;
    ctx.fillText(text, (LEFT_MM + t * MM_PER_S + 1) * k, rowTop + 5 * k);
  }

  /** Draw `record` ({signal, fs, lead_names, duration_s}) on `canvas`, as wide as `widthPx` allows (at least 3 px
   * per mm): the 10 s from `options.start` (default 0; clamped so the window stays in the record), with
   * `options.band` (from `saliencyBand`) shaded behind the rows and `options.peaks` ({r_peaks, lead}) marked. */
  function draw(canvas, record, widthPx, options = {}) {
    const k = Math.max(MIN_PX_PER_MM, (widthPx || WIDTH_MM * 4) / WIDTH_MM);
    const ratio = window.devicePixelRatio || 1;
    canvas.width = Math.round(WIDTH_MM * k * ratio);
    canvas.height = Math.round(HEIGHT_MM * k * ratio);
    canvas.style.width = `${Math.round(WIDTH_MM * k)}px`;
    canvas.style.height = `${Math.round(HEIGHT_MM * k)}px`;
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    drawGrid(ctx, k);
    const fs = record.fs;
    const index = leadIndex(record.lead_names);
    const total = record.signal.length ? record.signal[0].length / fs : 0;
    const start = Math.max(0, Math.min(options.start || 0, total - STRIP_S));
    const shown = Math.min(STRIP_S, total - start);
    const first = Math.round(start * fs);
    const offsets = record.signal.map((lead) => median(lead.slice(first, first + Math.ceil(shown * fs))));
    const peaks = options.peaks && options.peaks.r_peaks ? options.peaks : null;
    const peakLead = peaks && peaks.lead ? peaks.lead.toLowerCase() : null;
    // what was drawn: the window [start, end) s; band: the record's saliency band shaded (null: none); saliency:
    // its spans in the window; peaks: the R-peak marks ({sample, t, lead, row: "rhythm" | "panel"}); panels: each
    // panel's label and trace, row by row ({row: 0-2 or "rhythm", column, lead, t0, t1, trace: drawSpan's answer})
    const result = { start, end: start + shown, total, pxPerMm: k, band: options.band || null, saliency: [], peaks: [],
      panels: [] };
    ctx.lineJoin = "round";
    const rows = [...LAYOUT.map((leads) => leads.map((lead, c) => [lead, c * COLUMN_S, (c + 1) * COLUMN_S])),
      [[RHYTHM_LEAD, 0, STRIP_S]]];
    rows.forEach((cells, r) => {
      const rowTop = (TOP_MM + r * ROW_MM) * k;
      const baseline = rowTop + (ROW_MM * 0.6) * k;
      const rhythm = r === rows.length - 1;
      if (options.band) {
        const spans = drawSaliency(ctx, k, options.band, start, 0, STRIP_S, rowTop);
        if (rhythm) result.saliency = spans; // every row shades the same spans: the strip's are the window's
      }
      ctx.strokeStyle = COLOURS.trace;
      ctx.lineWidth = Math.max(1, 0.3 * k);
      drawCalibration(ctx, k, baseline);
      cells.forEach(([lead, t0, t1], c) => {
        const i = index[lead.toLowerCase()];
        ctx.strokeStyle = COLOURS.trace;
        const trace = i === undefined ? null
          : drawSpan(ctx, k, record.signal[i], fs, offsets[i], start, t0, t1, baseline);
        const text = i === undefined ? `${lead} (missing)` : lead;
        label(ctx, k, text, t0, rowTop);
        result.panels.push({ row: rhythm ? "rhythm" : r, column: c, lead: text, t0, t1, trace });
        if (peaks && i !== undefined && (rhythm || lead.toLowerCase() === peakLead)) {
          const marks = drawPeaks(ctx, k, record.signal[i], peaks.r_peaks, fs, offsets[i], start, t0, t1,
            baseline, rowTop);
          for (const mark of marks) result.peaks.push({ ...mark, lead, row: rhythm ? "rhythm" : "panel" });
        }
        if (c > 0) { // the column boundary, as printed ECGs mark it
          ctx.strokeStyle = COLOURS.trace;
          ctx.beginPath();
          const x = (LEFT_MM + t0 * MM_PER_S) * k;
          ctx.moveTo(x, baseline - 4 * k);
          ctx.lineTo(x, baseline + 4 * k);
          ctx.stroke();
        }
      });
    });
    result.shownSeconds = shown;
    last = result;
    return result;
  }

  return {
    draw, saliencyBand, LAYOUT, WIDTH_MM, HEIGHT_MM, MM_PER_S, MM_PER_MV, STRIP_S, SALIENCY_RGB, SALIENCY_MAX_ALPHA,
    get last() { return last; },
  };
})();
