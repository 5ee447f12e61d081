// The cocoon node dashboard: polls ./api/status every 2 s, fills the page and draws the
// charts as inline SVG. No library, nothing loaded from elsewhere (the page's CSP forbids it).
'use strict';
(function () {
  const REFRESH_MS = 2000;
  const SVG = 'http://www.w3.org/2000/svg';
  const NANO = 1e9;

  let points = [];        // history points, oldest first (the node keeps the same ring)
  let capacity = 8640;
  let started = null;     // the node's start, to notice a restart
  let last = null;        // the latest report's status
  let windowS = 3600;

  const $ = (id) => document.getElementById(id);
  const set = (id, text) => { const e = $(id); if (e) e.textContent = text; };

  // ---- formatting -------------------------------------------------------------------------
  const int = (n) => (n == null ? '–' : Number(n).toLocaleString('en-US'));
  function ton(nano) {
    if (nano == null) return '–';
    const whole = Math.floor(nano / NANO);
    const frac = nano - whole * NANO;
    if (frac === 0) return String(whole);
    return whole + '.' + String(frac).padStart(9, '0').replace(/0+$/, '');
  }
  function secs(s) {
    if (s == null) return '–';
    if (s < 1) return Math.round(s * 1000) + ' ms';
    return s.toFixed(2) + ' s';
  }
  function rate(r) {
    if (r == null) return '–';
    if (r === 0) return '0';
    if (r < 0.01) return r.toExponential(1);
    return r < 10 ? r.toFixed(2) : r.toFixed(1);
  }
  function duration(s) {
    if (s == null) return '–';
    if (s <= 0) return 'expired';
    const d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600);
    const m = Math.floor(s % 3600 / 60), sec = Math.floor(s % 60);
    if (d > 0) return d + ' d ' + h + ' h';
    if (h > 0) return h + ' h ' + String(m).padStart(2, '0') + ' min';
    if (m > 0) return m + ' min ' + String(sec).padStart(2, '0') + ' s';
    return sec + ' s';
  }
  function axisNumber(v) {
    if (v === 0) return '0';
    const a = Math.abs(v);
    if (a < 0.001) return v.toExponential(1);
    for (const [f, suffix] of [[1e9, 'G'], [1e6, 'M'], [1e3, 'k']]) {
      if (a >= f) return Number((v / f).toPrecision(3)) + suffix;
    }
    return String(Number(v.toPrecision(3)));
  }
  const plural = (n, one, many) => int(n) + ' ' + (n === 1 ? one : many);
  function clock(ms, withSeconds) {
    const d = new Date(ms);
    const p = (n) => String(n).padStart(2, '0');
    return p(d.getHours()) + ':' + p(d.getMinutes()) + (withSeconds ? ':' + p(d.getSeconds()) : '');
  }
  function niceCeil(v) {
    if (!(v > 0)) return 1;
    const e = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * e) return m * e;
    return 10 * e;
  }

  // ---- charts -----------------------------------------------------------------------------
  function el(name, attrs, text) {
    const e = document.createElementNS(SVG, name);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    if (text != null) e.textContent = text;
    return e;
  }

  // series: [{values: [[t_ms, v|null], ...]}]; the time axis ends at `end` (ms) and spans
  // the chosen window, or the node's life when that is shorter (at least a minute).
  function chart(svg, series, end) {
    const W = 560, H = 190, L = 52, R = 10, T = 10, B = 24;
    const start = Math.min(end - 60000, Math.max(end - windowS * 1000, started || 0));
    svg.setAttribute('viewBox', '0 0 ' + W + ' ' + H);
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    let max = 0, any = false;
    for (const s of series) for (const [t, v] of s.values) {
      if (t >= start && t <= end && v != null) { any = true; if (v > max) max = v; }
    }
    max = niceCeil(max);
    const x = (t) => L + (t - start) / (end - start) * (W - L - R);
    const y = (v) => H - B - v / max * (H - T - B);
    for (const f of [0, 0.5, 1]) {
      const v = max * f;
      svg.appendChild(el('line', { class: 'grid', x1: L, x2: W - R, y1: y(v), y2: y(v) }));
      svg.appendChild(el('text', { class: 'axis', x: L - 6, y: y(v) + 3, 'text-anchor': 'end' },
        f === 0 ? '0' : axisNumber(v)));
    }
    for (let i = 0; i <= 3; i++) {
      const t = start + (end - start) * i / 3;
      const anchor = i === 0 ? 'start' : i === 3 ? 'end' : 'middle';
      svg.appendChild(el('text', { class: 'axis', x: x(t), y: H - 6, 'text-anchor': anchor },
        clock(t, end - start <= 3600 * 1000)));
    }
    if (!any) {
      svg.appendChild(el('text', { class: 'empty', x: (L + W - R) / 2, y: (T + H - B) / 2,
        'text-anchor': 'middle' }, 'no data in this window yet'));
      return;
    }
    // The first series is drawn last, on top: billed hides vouchered when they agree.
    series.map((s, i) => [s, i]).reverse().forEach(([s, i]) => {
      let d = '', run = [];
      const flush = () => {
        if (run.length === 1) {
          svg.appendChild(el('circle', { class: 's' + i, cx: run[0][0], cy: run[0][1], r: 2.5 }));
        }
        run = [];
      };
      for (const [t, v] of s.values) {
        if (t < start || t > end || v == null) { flush(); continue; }
        const px = x(t).toFixed(1), py = y(v).toFixed(1);
        d += (run.length ? 'L' : 'M') + px + ' ' + py;
        run.push([px, py]);
      }
      flush();
      if (d) svg.appendChild(el('path', { class: 'line s' + i, d }));
    });
  }

  function legend(id, names) {
    const e = $(id);
    if (!e || e.childElementCount) return;
    names.forEach((n, i) => {
      const span = document.createElement('span');
      const swatch = document.createElement('i');
      swatch.className = 's' + i;
      span.appendChild(swatch);
      span.appendChild(document.createTextNode(n));
      e.appendChild(span);
    });
  }

  function drawCharts() {
    if (!last) return;
    const end = last.at_ms;
    // The history's points, and the status now as the last one.
    const now = {
      t_ms: last.at_ms,
      billed_nanoton: last.totals.billed_nanoton,
      vouchered_nanoton: last.totals.vouchered_nanoton,
      settled_nanoton: last.totals.settled_nanoton,
      jobs_per_s: last.rates.jobs_per_s,
      prompt_tokens_per_s: last.rates.prompt_tokens_per_s,
      generation_tokens_per_s: last.rates.generation_tokens_per_s,
    };
    const all = points.length && points[points.length - 1].t_ms >= now.t_ms ? points : points.concat([now]);
    const pick = (f) => all.map((p) => [p.t_ms, f(p)]);
    // Small sums read better in nanoTON, the unit prices and vouchers use.
    const most = Math.max(0, ...all.map((p) => p.billed_nanoton));
    const unit = most < 0.01 * NANO ? 1 : NANO;
    set('unit-earnings', unit === 1 ? 'nanoTON' : 'TON');
    chart($('chart-earnings'), [
      { values: pick((p) => p.billed_nanoton / unit) },
      { values: pick((p) => p.vouchered_nanoton / unit) },
      { values: pick((p) => p.settled_nanoton / unit) },
    ], end);
    chart($('chart-tokens'), [
      { values: pick((p) => p.generation_tokens_per_s) },
      { values: pick((p) => p.prompt_tokens_per_s) },
    ], end);
    chart($('chart-jobs'), [{ values: pick((p) => p.jobs_per_s) }], end);
    const ttft = (q) => points.map((p) => [p.t_ms, p.ttft ? p.ttft[q] : null]);
    chart($('chart-ttft'), [
      { values: ttft('p50_s') }, { values: ttft('p90_s') }, { values: ttft('p99_s') },
    ], end);
    legend('legend-earnings', ['billed', 'vouchered', 'settled']);
    legend('legend-tokens', ['generated', 'prompt']);
    legend('legend-jobs', ['finished']);
    legend('legend-ttft', ['p50', 'p90', 'p99']);
    set('history-note', plural(points.length, 'point', 'points') + ' kept by the node (one per ' +
      Math.round((last.interval_ms || 10000) / 1000) + ' s, up to ' + capacity + ')');
  }

  // ---- the status -------------------------------------------------------------------------
  function renderPrices(models) {
    const body = $('prices');
    while (body.firstChild) body.removeChild(body.firstChild);
    if (!models.length) {
      const tr = document.createElement('tr');
      const td = document.createElement('td');
      td.colSpan = 5; td.className = 'muted'; td.textContent = 'no model served';
      tr.appendChild(td); body.appendChild(tr);
      return;
    }
    for (const m of models) {
      const tr = document.createElement('tr');
      const cell = (text, cls) => {
        const td = document.createElement('td');
        td.textContent = text; if (cls) td.className = cls; tr.appendChild(td);
      };
      const mk = m.market;
      let cls = '';
      if (mk) {
        if (m.completion_per_mtok <= mk.cheapest_completion_per_mtok) cls = 'cheaper';
        else if (m.completion_per_mtok > mk.median_completion_per_mtok) cls = 'dearer';
      }
      cell(m.model);
      cell(int(m.prompt_per_mtok) + ' / ' + int(m.completion_per_mtok), cls);
      cell(mk ? int(mk.cheapest_prompt_per_mtok) + ' / ' + int(mk.cheapest_completion_per_mtok) : '–');
      cell(mk ? int(mk.median_prompt_per_mtok) + ' / ' + int(mk.median_completion_per_mtok) : '–');
      cell(mk ? String(mk.workers) : 'none advertise it');
      body.appendChild(tr);
    }
  }

  function render(report) {
    const s = report.status;
    if (!s) { set('peer-id', 'waiting for the node\'s first reading…'); return; }
    last = Object.assign({}, s, { interval_ms: report.history.interval_ms });
    set('peer-id', s.peer_id);
    set('models', s.models.length ? s.models.map((m) => m.model).join(', ') : 'DHT node (no model)');
    set('updated', 'updated ' + clock(s.at_ms, true));
    const t = s.totals;
    set('jobs-total', int(t.jobs));
    set('jobs-rate', rate(s.rates.jobs_per_s));
    set('jobs-running', int(s.engine.running));
    set('jobs-waiting', int(s.engine.waiting));
    set('busy', int(t.busy_refusals));
    set('tokens-generated', int(t.generation_tokens));
    set('tokens-prompt', int(t.prompt_tokens));
    set('tokens-rate', rate(s.rates.generation_tokens_per_s));
    set('prompt-rate', rate(s.rates.prompt_tokens_per_s));
    set('kv-cache', Math.round(s.engine.kv_cache_usage * 100) + '%');
    set('earned-billed', ton(t.billed_nanoton));
    set('earned-billed-nano', String(t.billed_nanoton));
    set('earned-vouchered', ton(t.vouchered_nanoton));
    set('earned-settled', ton(t.settled_nanoton));
    set('ttft-p50', secs(s.ttft.p50_s));
    set('ttft-p90', secs(s.ttft.p90_s));
    set('ttft-p99', secs(s.ttft.p99_s));
    set('ttft-count', plural(s.ttft.count, 'job', 'jobs'));
    renderPrices(s.models);
    const p = s.peers;
    set('peers-connected', int(p.connected));
    set('peers-routing', int(p.routing_table));
    set('peers-reachability', p.reachability_detail || p.reachability);
    $('peers-reachability').className =
      p.reachability === 'local' || p.reachability === 'unknown' ? 'warn' : '';
    set('peers-dht', p.dht_server ? 'server (answers queries)' : 'client');
    set('peers-market', int(p.market_workers));
    const c = s.channels;
    set('channels-open', int(c.open));
    set('channels-unsettled', ton(c.unsettled_nanoton));
    set('channels-vouchered', ton(t.vouchered_nanoton));
    set('channels-settled', ton(t.settled_nanoton));
    const txs = Object.entries(c.chain_transactions || {});
    set('channels-chain', txs.length ? txs.map(([k, n]) => k + ' ' + n).join(', ') : 'none');
    const a = s.attestation;
    set('attest-kind', a ? (a.kind === 'dev-insecure' ? 'dev-insecure (clients must opt in)' : a.kind) : 'none (no model served)');
    $('attest-kind').className = a && a.kind === 'dev-insecure' ? 'warn' : '';
    set('attest-expiry', a ? duration(a.expires_in_s) : '–');
    $('attest-expiry').className = a && a.expires_in_s <= 0 ? 'bad' : '';
    set('attest-measurement', a ? (a.measurement || '–') : '–');
    set('uptime', duration(s.uptime_s));
  }

  function merge(report) {
    if (started !== report.started_ms) { points = []; started = report.started_ms; }
    capacity = report.history.capacity;
    const newest = points.length ? points[points.length - 1].t_ms : -1;
    for (const p of report.history.points) if (p.t_ms > newest) points.push(p);
    if (points.length > capacity) points.splice(0, points.length - capacity);
  }

  function badge(ok, text) {
    const e = $('state');
    e.textContent = text;
    e.className = 'state ' + (ok ? 'ok' : 'bad');
  }

  async function poll() {
    try {
      const since = points.length ? '?since=' + points[points.length - 1].t_ms : '';
      const response = await fetch('api/status' + since, { cache: 'no-store' });
      if (!response.ok) throw new Error('HTTP ' + response.status);
      const report = await response.json();
      merge(report);
      render(report);
      drawCharts();
      badge(true, 'live');
    } catch (e) {
      badge(false, 'node not answering (' + e.message + ')');
    } finally {
      setTimeout(poll, REFRESH_MS);
    }
  }

  $('windows').addEventListener('click', (ev) => {
    const b = ev.target.closest('button[data-window]');
    if (!b) return;
    windowS = Number(b.dataset.window);
    for (const other of document.querySelectorAll('#windows button')) {
      other.classList.toggle('on', other === b);
    }
    drawCharts();
  });

  poll();
})();
