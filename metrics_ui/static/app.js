// The Metrics UI page: polls /api/summary and /api/series once a second and redraws.
//
// Charts are Chart.js (served by this page's server from /static/vendor/). Each
// throughput chart has a legend table whose rows carry what the chart currently
// shows, computed here from the chart's own datasets: data-current (the newest
// point, empty when that point is a gap) and data-peak (the largest point in the
// window), in messages per second. Names come from the network, so they only
// ever reach the DOM as text or attribute values, never as markup.
"use strict";

(() => {
  const POLL_MS = 1000;
  const TIMEOUT_MS = 5000;
  const PALETTE = [
    "#2e90fa", "#f04438", "#12b76a", "#f79009", "#7a5af8",
    "#ee46bc", "#06aed4", "#66c61c", "#98a2b3", "#9e77ed",
  ];
  const colors = new Map();
  const latencyCharts = new Map();
  // The time axis covers the data held, in whole minutes, up to the server's history.
  let span = 60;

  const $ = (id) => document.getElementById(id);

  function colorFor(key) {
    if (!colors.has(key)) colors.set(key, PALETTE[colors.size % PALETTE.length]);
    return colors.get(key);
  }

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) {
      if (name === "class") node.className = value;
      else node.setAttribute(name, value);
    }
    for (const child of children) {
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  // A colour box; set through the style object, which the page's CSP allows (attributes it does not).
  function swatch(color) {
    const box = el("span", { class: "swatch" });
    box.style.background = color;
    return box;
  }

  function fmtRate(v) {
    if (v === null || v === undefined) return "\u2013";
    if (v >= 1e6) return `${(v / 1e6).toFixed(2)}M`;
    if (v >= 1e4) return `${(v / 1e3).toFixed(1)}k`;
    return v >= 100 ? Math.round(v).toLocaleString("en") : v.toFixed(1);
  }

  function fmtCount(v) {
    return v === null || v === undefined ? "\u2013" : v.toLocaleString("en");
  }

  // Percentiles are upper bounds of power-of-two bins, in nanoseconds.
  function fmtNs(ns) {
    if (ns === null || ns === undefined) return "\u2013";
    const units = [[1e9, "s"], [1e6, "ms"], [1e3, "\u00b5s"], [1, "ns"]];
    for (const [scale, unit] of units) {
      if (ns >= scale) {
        const v = ns / scale;
        return `\u2264 ${v >= 100 ? Math.round(v) : Number(v.toPrecision(2))} ${unit}`;
      }
    }
    return "\u2264 1 ns";
  }

  function timeTick(value) {
    if (value === 0) return "now";
    if (span <= 60) return `-${-value} s`;
    const minutes = -value / 60;
    return Number.isInteger(minutes) ? `-${minutes} min` : "";
  }

  function spanOf(series) {
    if (!series.times.length) return 60;
    const age = series.time - series.times[0];
    return Math.min(series.history_s, Math.max(60, Math.ceil(age / 60) * 60));
  }

  function lineChart(canvas) {
    return new Chart(canvas, {
      type: "line",
      data: { datasets: [] },
      options: {
        animation: false,
        responsive: true,
        maintainAspectRatio: false,
        spanGaps: false,
        interaction: { mode: "nearest", axis: "x", intersect: false },
        elements: { point: { radius: 0 }, line: { borderWidth: 2, tension: 0.25 } },
        scales: {
          x: { type: "linear", min: -span, max: 0, ticks: { stepSize: 10, callback: timeTick } },
          y: { beginAtZero: true, grace: "10%", title: { display: true, text: "msgs/s" } },
        },
        plugins: {
          legend: { display: false },
          tooltip: { callbacks: { label: (c) => `${c.dataset.label}: ${fmtRate(c.parsed.y)} msgs/s` } },
        },
      },
    });
  }

  // lines: [{key, label, values, dash}]; times: tick times (s); now: the newest tick.
  function setLines(chart, legend, lines, times, now) {
    const byKey = new Map(chart.data.datasets.map((d) => [d.key, d]));
    chart.data.datasets = lines.map((line) => {
      const dataset = byKey.get(line.key) || {
        key: line.key,
        borderColor: colorFor(line.key),
        backgroundColor: colorFor(line.key),
        borderDash: line.dash ? [6, 3] : [],
      };
      dataset.label = line.label; // may change: step labels gain their pipeline once there are two
      dataset.data = times.map((t, i) => ({ x: t - now, y: line.values[i] }));
      return dataset;
    });
    chart.options.scales.x.min = -span;
    chart.options.scales.x.ticks.stepSize = span <= 60 ? 10 : 60;
    chart.update("none");
    renderLegend(chart, legend);
  }

  // The legend reads back what the chart holds, so it shows exactly what is drawn.
  function renderLegend(chart, legend) {
    const rows = chart.data.datasets.map((dataset) => {
      const ys = dataset.data.map((p) => p.y);
      const last = ys.length ? ys[ys.length - 1] : null;
      const drawn = ys.filter((y) => y !== null && y !== undefined);
      const peak = drawn.length ? Math.max(...drawn) : null;
      return el(
        "tr",
        {
          "data-key": dataset.key,
          "data-label": dataset.label,
          "data-current": last === null || last === undefined ? "" : String(last),
          "data-peak": peak === null ? "" : String(peak),
        },
        el("td", {}, swatch(dataset.borderColor), dataset.label),
        el("td", { class: "num" }, `${fmtRate(last)} msgs/s now`),
        el("td", { class: "num" }, `peak ${fmtRate(peak)}`),
      );
    });
    legend.replaceChildren(...rows);
  }

  function renderThroughput(charts, series) {
    const times = series.times;
    const now = series.time === null ? 0 : series.time;
    const pipelines = [];
    for (const [name, p] of Object.entries(series.pipelines)) {
      if (p.in) pipelines.push({ key: `pipeline:${name}:in`, label: `${name} in`, values: p.in });
      if (p.out) pipelines.push({ key: `pipeline:${name}:out`, label: `${name} out`, values: p.out, dash: true });
    }
    const workers = Object.entries(series.workers).map(([name, values]) => (
      { key: `worker:${name}`, label: name, values }
    ));
    const many = Object.keys(series.steps).length > 1;
    const steps = [];
    for (const [pipeline, byStep] of Object.entries(series.steps)) {
      for (const [step, values] of Object.entries(byStep)) {
        steps.push({ key: `step:${pipeline}:${step}`, label: many ? `${pipeline} / ${step}` : step, values });
      }
    }
    setLines(charts.pipelines, $("legend-pipelines"), pipelines, times, now);
    setLines(charts.workers, $("legend-workers"), workers, times, now);
    setLines(charts.steps, $("legend-steps"), steps, times, now);
  }

  function groupCounts(bins, groups) {
    return groups.map((g) => {
      let n = 0;
      for (const [bin, count] of Object.entries(bins)) {
        const i = Number(bin);
        if (i >= g.first_bin && i <= g.last_bin) n += count;
      }
      return n;
    });
  }

  function percent(counts) {
    const total = counts.reduce((a, b) => a + b, 0);
    return counts.map((c) => (total ? (100 * c) / total : 0));
  }

  function percentileText(label, lat) {
    if (!lat.count) return el("span", {}, `${label}: no messages`);
    return el(
      "span",
      {},
      `${label} (${fmtCount(lat.count)} msgs): p50 `, el("b", {}, fmtNs(lat.p50)),
      " \u00b7 p95 ", el("b", {}, fmtNs(lat.p95)),
      " \u00b7 p99 ", el("b", {}, fmtNs(lat.p99)),
    );
  }

  function latencyChart(name) {
    const canvas = el("canvas", { "aria-label": `Latency of ${name}` });
    const box = el(
      "div",
      { class: "latency", "data-pipeline": name },
      el("h3", {}, name),
      el("p", { class: "percentiles" }),
      el("div", { class: "chart bars" }, canvas),
    );
    $("latency-charts").append(box);
    const chart = new Chart(canvas, {
      type: "bar",
      data: { labels: [], datasets: [
        { label: "last minute", backgroundColor: "#2e90fa", data: [] },
        { label: "since start", backgroundColor: "#b2ddff", data: [] },
      ] },
      options: {
        animation: false,
        responsive: true,
        maintainAspectRatio: false,
        scales: { y: { beginAtZero: true, max: 100, title: { display: true, text: "% of msgs" } } },
        plugins: {
          legend: { position: "right", labels: { boxWidth: 12 } },
          tooltip: { callbacks: { label: (c) => `${c.dataset.label}: ${c.parsed.y.toFixed(1)} %` } },
        },
      },
    });
    return { box, chart };
  }

  function renderLatency(summary) {
    const groups = summary.latency_groups;
    const names = Object.keys(summary.pipelines);
    const withData = names.filter((n) => summary.pipelines[n].latency.total.count > 0);
    document.querySelector("#latency-charts > .empty")?.toggleAttribute("hidden", withData.length > 0);
    for (const [name, entry] of latencyCharts) {
      if (!withData.includes(name)) {
        entry.chart.destroy();
        entry.box.remove();
        latencyCharts.delete(name);
      }
    }
    for (const name of withData) {
      if (!latencyCharts.has(name)) latencyCharts.set(name, latencyChart(name));
      const { box, chart } = latencyCharts.get(name);
      const lat = summary.pipelines[name].latency;
      chart.data.labels = groups.map((g) => g.label);
      chart.data.datasets[0].data = percent(groupCounts(lat.recent.bins, groups));
      chart.data.datasets[1].data = percent(groupCounts(lat.total.bins, groups));
      chart.update("none");
      const line = box.querySelector(".percentiles");
      line.replaceChildren(
        percentileText("last minute", lat.recent), el("br"), percentileText("since start", lat.total),
      );
      box.dataset.p50 = lat.recent.p50 ?? "";
      box.dataset.p95 = lat.recent.p95 ?? "";
      box.dataset.p99 = lat.recent.p99 ?? "";
    }
  }

  function renderWorkers(summary) {
    const rows = Object.entries(summary.workers).map(([name, w]) => {
      const lat = w.latency.recent;
      // seq counts every record made, dropped ones included: its gaps are all the losses
      const lost = w.missed_records;
      return el(
        "tr",
        { "data-worker": name, "data-live": String(w.live), "data-messages": String(w.messages) },
        el("td", {}, name),
        el("td", {}, el("span", { class: `pill ${w.live ? "live" : "gone"}` }, w.live ? "live" : `gone ${Math.round(w.last_seen_s)} s`)),
        el("td", { class: "num" }, fmtCount(w.messages)),
        el("td", { class: "num" }, fmtRate(w.rate)),
        el("td", { class: "num" }, fmtCount(w.messages_out)),
        el("td", { class: "num" }, fmtCount(w.messages_forwarded)),
        el("td", { class: "num" }, lat.count ? `${fmtNs(lat.p50)} / ${fmtNs(lat.p95)} / ${fmtNs(lat.p99)}` : "\u2013"),
        el("td", { class: "num" }, String(Math.max(0, w.incarnations - 1))),
        el("td", { class: "num" }, fmtCount(lost)),
        el("td", { class: "num" }, String(Math.max(0, ((w.stream && w.stream.connections) || 1) - 1))),
      );
    });
    document.querySelector("#workers tbody").replaceChildren(...rows);
    $("no-workers").hidden = rows.length > 0;
    if (summary.stats_address) $("stats-address").textContent = summary.stats_address;
  }

  // The newest point of the pipeline lines, summed: the headline agrees with the chart.
  function renderHeadline(summary, series) {
    let ingest = null;
    let out = null;
    const newest = (values) => (values && values.length ? values[values.length - 1] : null);
    for (const p of Object.values(series.pipelines)) {
      if (newest(p.in) !== null) ingest = (ingest || 0) + newest(p.in);
      if (newest(p.out) !== null) out = (out || 0) + newest(p.out);
    }
    $("total-in").textContent = `${fmtRate(ingest)}/s`;
    $("total-out").textContent = `${fmtRate(out)}/s`;
    $("live-workers").textContent = `${summary.live_workers} / ${Object.keys(summary.workers).length}`;
  }

  function setStatus(state, text) {
    const status = $("status");
    status.dataset.state = state;
    status.textContent = text;
  }

  async function getJSON(path) {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), TIMEOUT_MS);
    try {
      const response = await fetch(path, { cache: "no-store", signal: controller.signal });
      if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
      return await response.json();
    } finally {
      clearTimeout(timer);
    }
  }

  function start() {
    if (typeof Chart === "undefined") {
      const banner = $("banner");
      banner.textContent = "The chart library did not load (/static/vendor/chart.umd.js). Run `make metrics-ui-install` in the project and reload.";
      banner.hidden = false;
      setStatus("down", "chart library missing");
      return;
    }
    const charts = {
      pipelines: lineChart($("chart-pipelines")),
      workers: lineChart($("chart-workers")),
      steps: lineChart($("chart-steps")),
    };
    let polls = 0;
    async function poll() {
      try {
        const [summary, series] = await Promise.all([getJSON("/api/summary"), getJSON("/api/series")]);
        span = spanOf(series);
        renderThroughput(charts, series);
        renderLatency(summary);
        renderWorkers(summary);
        renderHeadline(summary, series);
        const known = Object.keys(summary.workers).length;
        if (summary.live_workers > 0) setStatus("ok", `${summary.live_workers} worker${summary.live_workers > 1 ? "s" : ""} reporting`);
        else setStatus("idle", known ? "no worker reporting" : "waiting for stats");
        polls += 1;
        document.body.dataset.polls = String(polls);
      } catch (err) {
        setStatus("down", "Metrics UI server unreachable");
      } finally {
        setTimeout(poll, POLL_MS);
      }
    }
    poll();
  }

  start();
})();
