// The dashboard served at `/` and `/ui`: one self-contained page (no build step, nothing fetched
// but docxy's own `/api/stats`), kept as strings so that a bundled single executable carries it.
// Its style and script are allowed by their hashes (dashboard-handler.ts); the script fills the
// page with textContent and SVG elements only, never with HTML built from the data.

export const DASHBOARD_STYLE = String.raw`
:root {
  color-scheme: light dark;
  --bg: #f4f6f8; --card: #ffffff; --text: #1a1f26; --muted: #5d6776; --line: #e2e6eb;
  --accent: #2563eb; --accent-soft: #dbe6fd; --upstream: #f59e0b; --ok: #15803d; --warn: #b45309; --bad: #dc2626;
  --mono: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
}
@media (prefers-color-scheme: dark) {
  :root {
    --bg: #0e1116; --card: #161b22; --text: #e6e9ee; --muted: #8d97a5; --line: #262d37;
    --accent: #60a5fa; --accent-soft: #1e3a5f; --upstream: #fbbf24; --ok: #4ade80; --warn: #fbbf24; --bad: #f87171;
  }
}
* { box-sizing: border-box; }
html { -webkit-text-size-adjust: 100%; }
body { margin: 0; background: var(--bg); color: var(--text); font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
header { display: flex; flex-wrap: wrap; align-items: center; gap: 8px 16px; padding: 14px 20px; background: var(--card); border-bottom: 1px solid var(--line); }
header h1 { margin: 0; font-size: 20px; letter-spacing: .2px; }
header .meta { color: var(--muted); font-size: 13px; }
#live { margin-left: auto; display: inline-flex; align-items: center; gap: 6px; font-size: 13px; color: var(--muted); }
#live::before { content: ""; width: 9px; height: 9px; border-radius: 50%; background: var(--muted); }
#live.on::before { background: var(--ok); }
#live.off::before { background: var(--bad); }
main { max-width: 1280px; margin: 0 auto; padding: 16px; display: grid; gap: 16px; }
.grid { display: grid; gap: 16px; grid-template-columns: repeat(auto-fit, minmax(min(100%, 340px), 1fr)); }
.kpis { display: grid; gap: 12px; grid-template-columns: repeat(auto-fit, minmax(150px, 1fr)); }
section, .kpi { background: var(--card); border: 1px solid var(--line); border-radius: 10px; min-width: 0; }
section { padding: 14px 16px; }
section h2 { margin: 0 0 10px; font-size: 15px; font-weight: 600; display: flex; align-items: center; gap: 8px; flex-wrap: wrap; }
.kpi { padding: 12px 14px; }
.kpi .label { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .5px; }
.kpi .value { font-size: 26px; font-weight: 650; font-variant-numeric: tabular-nums; margin-top: 2px; }
.kpi .sub { color: var(--muted); font-size: 12px; }
.muted { color: var(--muted); }
.empty { color: var(--muted); font-size: 14px; padding: 6px 0; }
.upstream { display: grid; gap: 6px; padding: 10px 0; border-top: 1px solid var(--line); }
.upstream:first-of-type { border-top: 0; padding-top: 0; }
.upstream .name { font-weight: 600; overflow-wrap: anywhere; }
.upstream .url { color: var(--muted); font-size: 12px; overflow-wrap: anywhere; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 999px; font-size: 12px; font-weight: 600; border: 1px solid currentColor; }
.badge.ok { color: var(--ok); } .badge.bad { color: var(--bad); } .badge.hit { color: var(--ok); } .badge.miss { color: var(--warn); } .badge.partial { color: var(--accent); }
.error { color: var(--bad); font-size: 13px; overflow-wrap: anywhere; }
.quota { display: flex; align-items: center; gap: 12px; }
.quota svg { width: 92px; height: 52px; flex: none; }
.quota path { fill: none; stroke-width: 10; stroke-linecap: round; }
.quota .gauge-track { stroke: var(--line); }
.quota .gauge-value.ok { stroke: var(--ok); } .quota .gauge-value.warn { stroke: var(--warn); } .quota .gauge-value.bad { stroke: var(--bad); }
.quota .numbers { font-size: 13px; min-width: 0; overflow-wrap: anywhere; }
.quota .remaining { font-size: 18px; font-weight: 650; font-variant-numeric: tabular-nums; }
.tabs { display: inline-flex; flex-wrap: wrap; max-width: 100%; border: 1px solid var(--line); border-radius: 8px; overflow: hidden; margin-left: auto; }
.tabs button { font: inherit; font-size: 13px; border: 0; background: transparent; color: var(--muted); padding: 3px 10px; cursor: pointer; }
.tabs button[aria-pressed="true"] { background: var(--accent-soft); color: var(--text); }
.chart { width: 100%; height: auto; display: block; }
.chart text { fill: var(--muted); font-size: 11px; }
.chart .grid-line { stroke: var(--line); stroke-width: 1; }
.chart .ratio { fill: none; stroke: var(--accent); stroke-width: 2; stroke-linejoin: round; }
.chart .dot { fill: var(--accent); }
.chart .cache { fill: var(--accent); }
.chart .upstream-bytes { fill: var(--upstream); }
.legend { display: flex; gap: 14px; flex-wrap: wrap; font-size: 12px; color: var(--muted); margin-top: 6px; }
.legend span::before { content: ""; display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 5px; vertical-align: -1px; background: var(--swatch); }
.legend .c { --swatch: var(--accent); } .legend .u { --swatch: var(--upstream); }
ol.top { list-style: none; margin: 0; padding: 0; display: grid; gap: 8px; }
ol.top li { display: grid; grid-template-columns: 1fr auto; gap: 2px 10px; font-size: 14px; }
ol.top .image { font-family: var(--mono); font-size: 13px; overflow-wrap: anywhere; min-width: 0; }
ol.top .count { font-variant-numeric: tabular-nums; font-weight: 600; }
ol.top .bar { grid-column: 1 / -1; height: 5px; border-radius: 3px; background: var(--accent-soft); overflow: hidden; }
ol.top .bar i { display: block; height: 100%; background: var(--accent); }
table { width: 100%; border-collapse: collapse; font-size: 13px; }
th { text-align: left; color: var(--muted); font-weight: 500; font-size: 12px; padding: 4px 8px; border-bottom: 1px solid var(--line); }
td { padding: 6px 8px; border-bottom: 1px solid var(--line); vertical-align: top; }
td.image { font-family: var(--mono); overflow-wrap: anywhere; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
pre { margin: 0 0 12px; padding: 10px 12px; background: var(--bg); border: 1px solid var(--line); border-radius: 8px; font: 12px/1.5 var(--mono); overflow-x: auto; white-space: pre; }
.snippet-title { font-size: 13px; margin: 0 0 4px; }
.snippet-title code { font-family: var(--mono); color: var(--muted); overflow-wrap: anywhere; }
@media (max-width: 640px) {
  header { padding: 12px 14px; }
  main { padding: 10px; gap: 10px; }
  .kpi .value { font-size: 22px; }
  table.pulls thead { display: none; }
  table.pulls, table.pulls tbody, table.pulls tr, table.pulls td { display: block; width: 100%; }
  table.pulls tr { padding: 8px 0; border-bottom: 1px solid var(--line); display: grid; grid-template-columns: 1fr auto; gap: 2px 8px; }
  table.pulls td { border: 0; padding: 0; }
  table.pulls td.image { grid-column: 1 / -1; }
  table.pulls td.num { text-align: left; }
  .tabs button { padding: 3px 7px; font-size: 12px; }
}
`;

export const DASHBOARD_SCRIPT = String.raw`
'use strict';
(function () {
  var SVG = 'http://www.w3.org/2000/svg';
  var state = { report: null, range: 'hour', client: 'docker' };

  function $(id) { return document.getElementById(id); }
  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }
  function svg(tag, attrs, parent) {
    var node = document.createElementNS(SVG, tag);
    for (var name in attrs) node.setAttribute(name, String(attrs[name]));
    if (parent) parent.appendChild(node);
    return node;
  }
  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }
  function bytes(n) {
    if (!n) return '0 B';
    var units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    var i = Math.min(units.length - 1, Math.floor(Math.log(n) / Math.log(1024)));
    var v = n / Math.pow(1024, i);
    return (i === 0 ? String(n) : v.toFixed(v < 10 ? 1 : 0)) + ' ' + units[i];
  }
  function percent(ratio) { return ratio === null || ratio === undefined ? '–' : (ratio * 100).toFixed(1) + '%'; }
  function ago(iso) {
    var s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
    if (s < 60) return s + ' s ago';
    if (s < 3600) return Math.floor(s / 60) + ' min ago';
    if (s < 86400) return Math.floor(s / 3600) + ' h ago';
    return Math.floor(s / 86400) + ' d ago';
  }
  function duration(seconds) {
    if (seconds % 3600 === 0) return seconds / 3600 + ' h';
    if (seconds % 60 === 0) return seconds / 60 + ' min';
    return seconds + ' s';
  }
  function uptime(s) {
    if (s < 60) return s + ' s';
    if (s < 3600) return Math.floor(s / 60) + ' min';
    if (s < 86400) return Math.floor(s / 3600) + ' h ' + Math.floor((s % 3600) / 60) + ' min';
    return Math.floor(s / 86400) + ' d ' + Math.floor((s % 86400) / 3600) + ' h';
  }
  function clock(t) { var d = new Date(t); return String(d.getHours()).padStart(2, '0') + ':' + String(d.getMinutes()).padStart(2, '0'); }
  function short(reference) { return reference.indexOf(':') > 0 ? '@' + reference.slice(0, 19) : ':' + reference; }

  function renderKpis(r) {
    var hour = r.cache ? r.cache.hour : null;
    var day = r.cache ? r.cache.day : null;
    $('kpi-ratio-hour').textContent = hour ? percent(hour.hitRatio) : 'off';
    $('kpi-ratio-hour-sub').textContent = hour ? hour.hits + ' hits, ' + hour.misses + ' misses' : 'cache disabled';
    $('kpi-saved-hour').textContent = hour ? bytes(hour.bytesFromCache) : '–';
    $('kpi-saved-hour-sub').textContent = hour ? bytes(hour.bytesFromUpstream) + ' from upstream' : '';
    $('kpi-ratio-day').textContent = day ? percent(day.hitRatio) : 'off';
    $('kpi-saved-day').textContent = day ? bytes(day.bytesFromCache) : '–';
    $('kpi-saved-day-sub').textContent = day ? bytes(day.bytesFromUpstream) + ' from upstream' : '';
    $('kpi-pulls').textContent = String(r.pulls.total);
    $('meta').textContent = 'v' + r.version + ' · up ' + uptime(r.uptimeSeconds);
  }

  function gauge(fraction) {
    var g = svg('svg', { viewBox: '0 0 100 56', role: 'img' });
    var arc = 'M 10 50 A 40 40 0 0 1 90 50';
    svg('path', { d: arc, class: 'gauge-track' }, g);
    var length = Math.PI * 40;
    var level = fraction > 0.5 ? 'ok' : fraction > 0.2 ? 'warn' : 'bad';
    var value = svg('path', { d: arc, class: 'gauge-value ' + level, 'stroke-dasharray': (length * fraction).toFixed(1) + ' ' + length.toFixed(1) }, g);
    if (fraction <= 0) value.setAttribute('stroke-opacity', '0');
    svg('title', {}, g).textContent = Math.round(fraction * 100) + '% of the quota left';
    return g;
  }

  function renderUpstreams(r) {
    var box = $('upstreams');
    clear(box);
    r.upstreams.forEach(function (u) {
      var item = el('div', 'upstream');
      item.setAttribute('data-upstream', u.name);
      var head = el('div');
      head.appendChild(el('span', 'name', u.name + (u.default ? ' (default)' : '')));
      head.appendChild(document.createTextNode(' '));
      var badge = el('span', 'badge ' + (u.reachable ? 'ok' : 'bad'), u.reachable ? 'reachable' : 'unreachable');
      badge.setAttribute('data-testid', 'reachable');
      head.appendChild(badge);
      item.appendChild(head);
      item.appendChild(el('div', 'url', u.url + ' · checked ' + ago(u.checkedAt) + (u.status ? ' · HTTP ' + u.status : '')));
      if (u.lastError) item.appendChild(el('div', 'error', u.lastError));
      var quotas = r.quota.filter(function (q) { return q.upstream === u.name; });
      quotas.forEach(function (q) {
        var row = el('div', 'quota');
        row.setAttribute('data-identity', q.identity);
        var known = typeof q.limit === 'number' && typeof q.remaining === 'number' && q.limit > 0;
        row.appendChild(gauge(known ? Math.max(0, Math.min(1, q.remaining / q.limit)) : 0));
        var numbers = el('div', 'numbers');
        var remaining = el('div', 'remaining', (typeof q.remaining === 'number' ? q.remaining : '?') + (typeof q.limit === 'number' ? ' / ' + q.limit : ''));
        remaining.setAttribute('data-testid', 'quota-remaining');
        numbers.appendChild(remaining);
        numbers.appendChild(el('div', 'muted', 'pulls left' + (q.windowSeconds ? ' per ' + duration(q.windowSeconds) : '') + ' as ' + q.identity));
        numbers.appendChild(el('div', 'muted', (q.source ? 'counted on ' + q.source + ' · ' : '') + 'seen ' + ago(q.seenAt)));
        row.appendChild(numbers);
        item.appendChild(row);
      });
      if (quotas.length === 0) item.appendChild(el('div', 'muted', 'no quota reported by this upstream yet'));
      box.appendChild(item);
    });
  }

  function axis(chart, points, width, height, pad) {
    [0, 0.5, 1].forEach(function (f) {
      var y = pad.top + (height - pad.top - pad.bottom) * (1 - f);
      svg('line', { x1: pad.left, x2: width - pad.right, y1: y, y2: y, class: 'grid-line' }, chart);
    });
    var last = points.length - 1;
    [0, Math.floor(last / 2), last].forEach(function (i, n) {
      var x = pad.left + (width - pad.left - pad.right) * (last === 0 ? 0 : i / last);
      var label = svg('text', { x: x, y: height - 4, 'text-anchor': n === 0 ? 'start' : n === 2 ? 'end' : 'middle' }, chart);
      label.textContent = n === 2 ? 'now' : clock(points[i].t);
    });
  }

  /** Drawn at the size shown, so that labels keep their size on a phone. */
  function chartWidth(box) { return Math.max(240, Math.round(box.clientWidth || 600)); }

  function ratioChart(box, span) {
    var width = chartWidth(box), height = 170, pad = { left: 36, right: 8, top: 10, bottom: 20 };
    var chart = svg('svg', { viewBox: '0 0 ' + width + ' ' + height, class: 'chart', role: 'img', 'aria-label': 'cache hit ratio' });
    var points = span.points;
    axis(chart, points, width, height, pad);
    ['100%', '50%', '0%'].forEach(function (label, i) {
      svg('text', { x: pad.left - 6, y: pad.top + (height - pad.top - pad.bottom) * (i / 2) + 4, 'text-anchor': 'end' }, chart).textContent = label;
    });
    var innerW = width - pad.left - pad.right, innerH = height - pad.top - pad.bottom;
    var path = '';
    var drawn = 0;
    points.forEach(function (p, i) {
      var total = p.hits + p.misses;
      if (total === 0) { path += ' '; return; }
      var x = pad.left + innerW * (points.length === 1 ? 0 : i / (points.length - 1));
      var y = pad.top + innerH * (1 - p.hits / total);
      var dot = svg('circle', { cx: x.toFixed(1), cy: y.toFixed(1), r: 2.5, class: 'dot' }, chart);
      svg('title', {}, dot).textContent = clock(p.t) + ': ' + percent(p.hits / total) + ' (' + p.hits + ' hits, ' + p.misses + ' misses)';
      path += (path.length === 0 || path.charAt(path.length - 1) === ' ' ? 'M' : 'L') + x.toFixed(1) + ' ' + y.toFixed(1);
      drawn++;
    });
    if (drawn > 1) svg('path', { d: path.replace(/ +/g, ' ').trim(), class: 'ratio' }, chart);
    box.appendChild(chart);
  }

  function bytesChart(box, span) {
    var width = chartWidth(box), height = 170, pad = { left: 52, right: 8, top: 10, bottom: 20 };
    var chart = svg('svg', { viewBox: '0 0 ' + width + ' ' + height, class: 'chart', role: 'img', 'aria-label': 'bytes from the cache and from upstream' });
    var points = span.points;
    axis(chart, points, width, height, pad);
    var max = 0;
    points.forEach(function (p) { max = Math.max(max, p.bytesFromCache + p.bytesFromUpstream); });
    svg('text', { x: pad.left - 6, y: pad.top + 4, 'text-anchor': 'end' }, chart).textContent = bytes(max);
    svg('text', { x: pad.left - 6, y: height - pad.bottom + 4, 'text-anchor': 'end' }, chart).textContent = '0';
    var innerW = width - pad.left - pad.right, innerH = height - pad.top - pad.bottom;
    var step = innerW / Math.max(1, points.length);
    points.forEach(function (p, i) {
      if (max === 0) return;
      var x = pad.left + step * i + step * 0.1;
      var w = Math.max(1, step * 0.8);
      var hc = innerH * p.bytesFromCache / max, hu = innerH * p.bytesFromUpstream / max;
      var base = pad.top + innerH;
      var g = svg('g', {}, chart);
      svg('title', {}, g).textContent = clock(p.t) + ': ' + bytes(p.bytesFromCache) + ' from cache, ' + bytes(p.bytesFromUpstream) + ' from upstream';
      if (hc > 0) svg('rect', { x: x.toFixed(1), y: (base - hc).toFixed(1), width: w.toFixed(1), height: Math.max(1, hc).toFixed(1), class: 'cache' }, g);
      if (hu > 0) svg('rect', { x: x.toFixed(1), y: (base - hc - hu).toFixed(1), width: w.toFixed(1), height: Math.max(1, hu).toFixed(1), class: 'upstream-bytes' }, g);
    });
    box.appendChild(chart);
  }

  function renderCharts(r) {
    var ratio = $('chart-ratio'), traffic = $('chart-bytes');
    clear(ratio); clear(traffic);
    if (!r.cache) {
      ratio.appendChild(el('div', 'empty', 'The cache is disabled.'));
      return;
    }
    var span = r.cache[state.range];
    ratioChart(ratio, span);
    bytesChart(traffic, span);
    $('range-summary').textContent = percent(span.hitRatio) + ' hit ratio, ' + bytes(span.bytesFromCache) + ' saved';
  }

  function renderTop(r) {
    var list = $('top');
    clear(list);
    var max = r.pulls.top.length ? r.pulls.top[0].pulls : 0;
    r.pulls.top.forEach(function (image) {
      var item = el('li');
      item.appendChild(el('span', 'image', image.upstream + '/' + image.repository + short(image.reference)));
      item.appendChild(el('span', 'count', image.pulls));
      var bar = el('span', 'bar');
      var fill = el('i');
      fill.style.width = (max ? (100 * image.pulls / max) : 0).toFixed(1) + '%';
      bar.appendChild(fill);
      item.appendChild(bar);
      list.appendChild(item);
    });
    $('top-empty').hidden = r.pulls.top.length > 0;
  }

  function renderPulls(r) {
    var body = $('pulls');
    clear(body);
    r.pulls.recent.forEach(function (pull) {
      var row = el('tr');
      row.appendChild(el('td', 'image', pull.upstream + '/' + pull.repository + short(pull.reference)));
      var cache = el('td');
      cache.appendChild(el('span', 'badge ' + pull.cache, pull.cache));
      row.appendChild(cache);
      row.appendChild(el('td', 'num', bytes(pull.bytes)));
      row.appendChild(el('td', 'client', pull.client));
      var when = el('td', 'num muted', ago(pull.at));
      when.title = new Date(pull.at).toLocaleString();
      row.appendChild(when);
      body.appendChild(row);
    });
    $('pulls-empty').hidden = r.pulls.recent.length > 0;
  }

  function renderSnippets(r) {
    var tabs = $('client-tabs'), box = $('snippets');
    clear(tabs); clear(box);
    r.clientConfig.forEach(function (entry) {
      var button = el('button', '', entry.client);
      button.type = 'button';
      button.setAttribute('aria-pressed', String(entry.client === state.client));
      button.addEventListener('click', function () { state.client = entry.client; renderSnippets(state.report); });
      tabs.appendChild(button);
      if (entry.client !== state.client) return;
      entry.snippets.forEach(function (snippet) {
        var title = el('p', 'snippet-title', snippet.title);
        if (snippet.path) { title.appendChild(document.createTextNode(' ')); title.appendChild(el('code', '', snippet.path)); }
        box.appendChild(title);
        box.appendChild(el('pre', '', snippet.content));
      });
    });
  }

  function render(r) {
    state.report = r;
    renderKpis(r);
    renderUpstreams(r);
    renderCharts(r);
    renderTop(r);
    renderPulls(r);
    renderSnippets(r);
    $('updated').textContent = 'updated ' + new Date(r.generatedAt).toLocaleTimeString();
  }

  function live(on, text) {
    var badge = $('live');
    badge.className = on ? 'on' : 'off';
    badge.textContent = text;
  }

  var pollTimer = null;
  function poll() {
    fetch('/api/stats', { cache: 'no-store' })
      .then(function (response) { if (!response.ok) throw new Error('HTTP ' + response.status); return response.json(); })
      .then(function (r) { render(r); live(true, 'live (polling)'); })
      .catch(function () { live(false, 'offline'); });
  }
  function startPolling() {
    if (pollTimer === null) { pollTimer = setInterval(poll, 2000); poll(); }
  }
  function stopPolling() {
    if (pollTimer !== null) { clearInterval(pollTimer); pollTimer = null; }
  }

  document.querySelectorAll('#range button').forEach(function (button) {
    button.addEventListener('click', function () {
      state.range = button.getAttribute('data-range');
      document.querySelectorAll('#range button').forEach(function (b) { b.setAttribute('aria-pressed', String(b === button)); });
      if (state.report) renderCharts(state.report);
    });
  });

  var resizing = null;
  window.addEventListener('resize', function () {
    clearTimeout(resizing);
    resizing = setTimeout(function () { if (state.report) renderCharts(state.report); }, 150);
  });

  if (typeof EventSource === 'function') {
    var source = new EventSource('/api/stats/stream');
    source.addEventListener('stats', function (event) { stopPolling(); live(true, 'live'); render(JSON.parse(event.data)); });
    source.addEventListener('error', function () { live(false, 'reconnecting'); startPolling(); });
  } else {
    startPolling();
  }
})();
`;

/** The whole page. */
export function dashboardPage(): string {
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<title>docxy dashboard</title>
<link rel="icon" href="data:,">
<style>${DASHBOARD_STYLE}</style>
</head>
<body>
<header>
  <h1>docxy</h1>
  <span class="meta" id="meta"></span>
  <span class="meta" id="updated"></span>
  <span id="live" class="off">connecting</span>
</header>
<main>
  <div class="kpis">
    <div class="kpi"><div class="label">Hit ratio, last hour</div><div class="value" id="kpi-ratio-hour" data-testid="hit-ratio-hour">–</div><div class="sub" id="kpi-ratio-hour-sub"></div></div>
    <div class="kpi"><div class="label">Saved, last hour</div><div class="value" id="kpi-saved-hour" data-testid="bytes-saved-hour">–</div><div class="sub" id="kpi-saved-hour-sub"></div></div>
    <div class="kpi"><div class="label">Hit ratio, last day</div><div class="value" id="kpi-ratio-day" data-testid="hit-ratio-day">–</div></div>
    <div class="kpi"><div class="label">Saved, last day</div><div class="value" id="kpi-saved-day" data-testid="bytes-saved-day">–</div><div class="sub" id="kpi-saved-day-sub"></div></div>
    <div class="kpi"><div class="label">Pulls since start</div><div class="value" id="kpi-pulls" data-testid="pulls-total">–</div></div>
  </div>
  <div class="grid">
    <section aria-labelledby="h-upstreams"><h2 id="h-upstreams">Upstreams</h2><div id="upstreams"><div class="empty">Loading…</div></div></section>
    <section aria-labelledby="h-cache">
      <h2 id="h-cache">Cache <span class="muted" id="range-summary"></span>
        <span class="tabs" id="range"><button type="button" data-range="hour" aria-pressed="true">1 h</button><button type="button" data-range="day" aria-pressed="false">24 h</button></span>
      </h2>
      <div id="chart-ratio"></div>
      <div id="chart-bytes"></div>
      <div class="legend"><span class="c">from cache (saved)</span><span class="u">from upstream</span></div>
    </section>
  </div>
  <div class="grid">
    <section aria-labelledby="h-top"><h2 id="h-top">Top images</h2><ol class="top" id="top"></ol><div class="empty" id="top-empty">No pulls yet.</div></section>
    <section aria-labelledby="h-pulls"><h2 id="h-pulls">Recent pulls</h2>
      <table class="pulls"><thead><tr><th>Image</th><th>Cache</th><th>Bytes</th><th>Client</th><th>When</th></tr></thead><tbody id="pulls"></tbody></table>
      <div class="empty" id="pulls-empty">No pulls yet.</div>
    </section>
  </div>
  <section aria-labelledby="h-clients"><h2 id="h-clients">Point clients at this mirror <span class="tabs" id="client-tabs"></span></h2><div id="snippets"></div></section>
</main>
<script>${DASHBOARD_SCRIPT}</script>
</body>
</html>
`;
}
