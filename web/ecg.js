/* ecgfm-serve: the 12-lead tracing of the page at /ui, drawn on a <canvas> (no library).
 *
 * Standard layout: three rows of four columns (I aVR V1 V4 / II aVL V2 V5 / III aVF V3 V6), each column 2.5 s of
 * its leads, then a 10 s lead II rhythm strip; 25 mm/s and 10 mm/mV on the pink grid (1 mm minor, 5 mm major
 * lines), a 1 mV calibration pulse at the start of each row. Each lead's median (over the 10 s drawn) is taken
 * off so that a baseline offset in the file does not push the trace off its row. */
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
  const COLOURS = { paper: "#ffffff", minor: "#f7cdd5", major: "#e58a9d", trace: "#111111", text: "#5b0d1f" };

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

  function drawSpan(ctx, k, samples, fs, offset, t0, t1, baseline) {
    const first = Math.max(0, Math.floor(t0 * fs));
    const last = Math.min(samples.length, Math.ceil(t1 * fs));
    if (last - first < 2) return;
    ctx.beginPath();
    for (let i = first; i < last; i++) {
      const x = (LEFT_MM + (i / fs) * MM_PER_S) * k;
      const y = baseline - (samples[i] - offset) * MM_PER_MV * k;
      if (i === first) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    }
    ctx.stroke();
  }

  function label(ctx, k, text, t, rowTop) {
    ctx.fillStyle = COLOURS.text;
    ctx.font = `600 ${Math.max(11, 3.2 * k)}px system-ui, sans-serif`;
    ctx.fillText(text, (LEFT_MM + t * MM_PER_S + 1) * k, rowTop + 5 * k);
  }

  /** Draw `record` ({signal, fs, lead_names}) on `canvas`, as wide as `widthPx` allows (at least 3 px per mm). */
  function draw(canvas, record, widthPx) {
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
    const shown = Math.min(STRIP_S, record.signal.length ? record.signal[0].length / fs : 0);
    const offsets = record.signal.map((lead) => median(lead.slice(0, Math.ceil(shown * fs))));
    ctx.lineJoin = "round";
    const rows = [...LAYOUT.map((leads) => leads.map((lead, c) => [lead, c * COLUMN_S, (c + 1) * COLUMN_S])),
      [[RHYTHM_LEAD, 0, STRIP_S]]];
    rows.forEach((cells, r) => {
      const rowTop = (TOP_MM + r * ROW_MM) * k;
      const baseline = rowTop + (ROW_MM * 0.6) * k;
      ctx.strokeStyle = COLOURS.trace;
      ctx.lineWidth = Math.max(1, 0.3 * k);
      drawCalibration(ctx, k, baseline);
      cells.forEach(([lead, t0, t1], c) => {
        const i = index[lead.toLowerCase()];
        ctx.strokeStyle = COLOURS.trace;
        if (i !== undefined) drawSpan(ctx, k, record.signal[i], fs, offsets[i], t0, t1, baseline);
        label(ctx, k, i === undefined ? `${lead} (missing)` : lead, t0, rowTop);
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
    return { shownSeconds: shown, pxPerMm: k };
  }

  return { draw, LAYOUT, WIDTH_MM, HEIGHT_MM, MM_PER_S, MM_PER_MV };
})();
