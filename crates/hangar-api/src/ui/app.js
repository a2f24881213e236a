// Hangar's dashboard: a page per app and machine, drawn from the API
// (the session cookie stands for the token), following changes live.
'use strict';

const $ = (id) => document.getElementById(id);
let leave = []; // what the current page must stop when another is shown

// An element with attributes and children (text is always text, never HTML).
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (k === 'class') e.className = v;
    else e.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

class NotLoggedIn extends Error {}

async function api(method, path, body) {
  const opts = { method, credentials: 'same-origin', headers: { 'x-hangar-ui': '1' } };
  if (body !== undefined) {
    opts.headers['content-type'] = 'application/json';
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(path, opts);
  if (r.status === 401) throw new NotLoggedIn();
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = text; }
  if (!r.ok) throw new Error((data && data.error) || `${r.status} ${r.statusText}`);
  return data;
}

function say(msg, error) {
  const s = $('status');
  s.textContent = msg || '';
  s.className = error ? 'error' : '';
}

function crumbs(...parts) {
  const nav = $('crumbs');
  nav.replaceChildren();
  parts.forEach(([label, href], i) => {
    if (i) nav.append(' / ');
    nav.append(href ? el('a', { href }, label) : el('span', { 'aria-current': 'page' }, label));
  });
}

function stateBadge(state) {
  return el('span', { class: `state state-${state}`, 'data-state': state }, state);
}

function table(caption, head, rows, empty) {
  if (!rows.length) return el('p', { class: 'muted' }, empty);
  return el('div', { class: 'scroll' },
    el('table', { 'aria-label': caption },
      el('thead', {}, el('tr', {}, head.map((h) => el('th', { scope: 'col' }, h)))),
      el('tbody', {}, rows)));
}

function checks(m) {
  const cs = m.checks || [];
  if (!cs.length) return '';
  const by = (s) => cs.filter((c) => c.status === s).length;
  return [`${cs.length} total`, ...['passing', 'warning', 'critical']
    .filter((s) => by(s)).map((s) => `${by(s)} ${s}`)].join(', ');
}

// A small line chart of `series` ({t, v}) with its label and latest value.
function chart(label, unit, series, digits) {
  const NS = 'http://www.w3.org/2000/svg';
  const w = 240, h = 48;
  const vs = series.v || [];
  const last = vs.length ? vs[vs.length - 1] : null;
  const shown = last === null ? 'no data yet' : `${last.toFixed(digits)} ${unit}`;
  const svg = document.createElementNS(NS, 'svg');
  svg.setAttribute('viewBox', `0 0 ${w} ${h}`);
  svg.setAttribute('class', 'chart');
  svg.setAttribute('role', 'img');
  svg.setAttribute('aria-label', `${label} over the last minutes: now ${shown}`);
  if (vs.length > 1) {
    const max = Math.max(...vs) || 1;
    const t0 = series.t[0], t1 = series.t[series.t.length - 1] || t0 + 1;
    const pts = vs.map((v, i) => {
      const x = ((series.t[i] - t0) / Math.max(t1 - t0, 1)) * (w - 2) + 1;
      const y = h - 2 - (v / max) * (h - 6);
      return `${x.toFixed(1)},${y.toFixed(1)}`;
    }).join(' ');
    const line = document.createElementNS(NS, 'polyline');
    line.setAttribute('points', pts);
    svg.append(line);
  }
  return el('figure', { class: 'plot' }, svg, el('figcaption', {}, `${label}: ${shown}`));
}

// Follows this host's changes for `app`: `redraw` runs on each (at most
// every 300 ms) and every 10 s regardless (other hosts' changes).
function follow(app, redraw) {
  let pending = null;
  const soon = () => {
    if (pending) return;
    pending = setTimeout(() => { pending = null; redraw().catch(fail); }, 300);
  };
  const es = new EventSource(`/v1/hangar/apps/${encodeURIComponent(app)}/watch`);
  es.addEventListener('change', soon);
  const every = setInterval(soon, 10000);
  leave.push(() => { es.close(); clearInterval(every); clearTimeout(pending); });
}

async function act(app, m, op) {
  const id = m.id;
  const base = `/v1/apps/${encodeURIComponent(app)}/machines/${encodeURIComponent(id)}`;
  const ask = {
    stop: `Stop machine ${id}?`,
    restart: `Restart machine ${id}?`,
    suspend: `Suspend machine ${id}?`,
    destroy: `Destroy machine ${id}? Its root filesystem is lost.`,
  }[op];
  if (ask && !window.confirm(ask)) return;
  say(`${op}: ${id}…`);
  try {
    if (op === 'destroy') await api('DELETE', `${base}?force=true`);
    else await api('POST', `${base}/${op}`);
    say(`${op}: ${id} asked`);
  } catch (e) { fail(e); }
}

async function snapshot(app, v) {
  if (!window.confirm(`Take a snapshot of volume ${v.id} (${v.name})?`)) return;
  try {
    await api('POST', `/v1/apps/${encodeURIComponent(app)}/volumes/${encodeURIComponent(v.id)}/snapshots`);
    say(`snapshot of ${v.id} taken`);
  } catch (e) { fail(e); }
}

// Fly restores a snapshot as a new volume made from it.
async function restore(app, v, x) {
  const name = window.prompt(`Restore snapshot ${x.id} into a new volume named:`, v.name);
  if (!name) return;
  try {
    const nv = await api('POST', `/v1/apps/${encodeURIComponent(app)}/volumes`,
      { name, region: v.region, size_gb: v.size_gb, snapshot_id: x.id });
    say(`volume ${nv.id} made from snapshot ${x.id}`);
  } catch (e) { fail(e); }
}

function machineActions(app, m) {
  const b = (op, label, cls) => el('button', {
    type: 'button', class: cls, 'data-action': op, 'aria-label': `${label} ${m.id}`,
    onclick: () => act(app, m, op),
  }, label);
  const started = m.state === 'started';
  return el('div', { class: 'actions' },
    started ? null : b('start', 'Start', 'primary'),
    started ? b('stop', 'Stop') : null,
    started ? b('restart', 'Restart') : null,
    started ? b('suspend', 'Suspend') : null,
    b('destroy', 'Destroy', 'danger'));
}

// ---- pages ----------------------------------------------------------------

function showLogin(failed) {
  crumbs(['Log in']);
  $('logout').hidden = true;
  const input = el('input', { id: 'token', name: 'token', type: 'password', required: true,
    autocomplete: 'current-password' });
  $('main').replaceChildren(el('form', { class: 'login', method: 'post', action: '/ui/login' },
    el('h1', {}, 'Log in to Hangar'),
    failed ? el('p', { class: 'error', role: 'alert' }, 'That token was not accepted.') : null,
    el('label', { for: 'token' }, 'API token (the admin token, or an app\'s deploy token)'),
    input,
    el('button', { type: 'submit', class: 'primary' }, 'Log in')));
  input.focus();
}

async function appsPage() {
  crumbs(['Apps']);
  let list;
  try {
    list = (await api('GET', '/v1/apps?org_slug=personal')).apps;
  } catch (e) {
    if (e instanceof NotLoggedIn) throw e;
    // An app's token sees its app only.
    const cur = await api('GET', '/v1/tokens/current');
    const app = cur.tokens[0] && cur.tokens[0].apps[0];
    if (app) { location.hash = `#/apps/${encodeURIComponent(app)}`; return; }
    throw e;
  }
  const rows = list.map((a) => el('tr', {},
    el('td', {}, el('a', { href: `#/apps/${encodeURIComponent(a.name)}` }, a.name)),
    el('td', {}, a.status),
    el('td', {}, a.machine_count),
    el('td', { class: 'hide-narrow' }, a.network)));
  $('main').replaceChildren(el('h1', {}, 'Apps'),
    el('section', { class: 'card' },
      table('Apps', ['Name', 'Status', 'Machines', 'Network'], rows, 'No apps yet: hangar apps create NAME')));
  const hosts = await api('GET', '/v1/hangar/hosts').catch(() => null);
  if (hosts && hosts.length > 1) {
    $('main').append(el('h2', {}, 'Hosts'), el('section', { class: 'card' },
      table('Hosts', ['Host', 'Region', 'State', 'Machines', 'CPUs reserved', 'Memory reserved'],
        hosts.map((h) => el('tr', {}, el('td', {}, h.id), el('td', {}, h.region), el('td', {}, h.state),
          el('td', {}, h.machines), el('td', {}, `${h.reserved_cpus} / ${h.cpus}`),
          el('td', {}, `${h.reserved_memory_mb} / ${h.memory_mb} MB`))), '')));
  }
}

async function appPage(app) {
  const href = `#/apps/${encodeURIComponent(app)}`;
  crumbs(['Apps', '#/'], [app]);
  const machines = el('section', { class: 'card', id: 'machines' });
  const releases = el('section', { class: 'card', id: 'releases' });
  const extra = el('section', { class: 'card', id: 'extra' });
  const usage = el('section', { class: 'card', id: 'usage' });
  const proxy = el('section', { class: 'card', id: 'proxy' });
  $('main').replaceChildren(el('h1', {}, app), el('h2', {}, 'Machines'), machines,
    el('h2', {}, 'Usage'), usage, el('h2', {}, 'Proxy'), proxy,
    el('h2', {}, 'Releases'), releases, el('h2', {}, 'Addresses, volumes and secrets'), extra);
  const a = encodeURIComponent(app);
  const draw = async () => {
    const ms = await api('GET', `/v1/apps/${a}/machines`);
    ms.sort((x, y) => x.id.localeCompare(y.id));
    machines.replaceChildren(table('Machines',
      ['ID', 'Name', 'State', 'Region', 'Image', 'Private IP', 'Checks', 'Updated', 'Actions'],
      ms.map((m) => el('tr', { 'data-machine': m.id },
        el('td', {}, el('a', { href: `${href}/machines/${encodeURIComponent(m.id)}`, class: 'mono' }, m.id)),
        el('td', {}, m.name),
        el('td', {}, stateBadge(m.state), m.host_status && m.host_status !== 'ok' ? ` (host ${m.host_status})` : ''),
        el('td', {}, m.region),
        el('td', { class: 'mono hide-narrow' }, (m.config && m.config.image) || ''),
        el('td', { class: 'mono hide-narrow' }, m.private_ip),
        el('td', {}, checks(m)),
        el('td', { class: 'hide-narrow' }, m.updated_at),
        el('td', {}, machineActions(app, m)))),
      'No machines: hangar machine run IMAGE --app ' + app));
    const u = await api('GET', `/v1/hangar/apps/${a}/usage`);
    // In a cluster, each host's proxy has its own request plots.
    const hosts = Object.entries(u.hosts || {});
    const requests = hosts.length
      ? hosts.map(([h, r]) => [
        chart(`Requests via ${h}`, 'req/s', r.requests_per_sec, 1),
        chart(`Latency via ${h}`, 'ms', r.latency_ms, 1)])
      : [chart('Requests', 'req/s', u.requests_per_sec, 1), chart('Latency', 'ms', u.latency_ms, 1)];
    usage.replaceChildren(el('div', { class: 'plots' },
      requests,
      chart('Start latency', 'ms', u.start_ms || {}, 1),
      Object.entries(u.machines).map(([id, mu]) => [
        chart(`CPU ${id}`, 'cores', mu.cpu_cores, 3),
        chart(`Memory ${id}`, 'MiB', mu.memory_mb, 1),
        chart(`Network in ${id}`, 'B/s', mu.net_rx_bytes_per_sec, 0),
        chart(`Network out ${id}`, 'B/s', mu.net_tx_bytes_per_sec, 0),
      ])));
    const p = await api('GET', `/v1/hangar/apps/${a}/proxy`);
    const ago = (secs) => (secs === undefined || secs === null ? ''
      : secs < 90 ? `${secs.toFixed(0)} s` : `${(secs / 60).toFixed(0)} min`);
    proxy.replaceChildren(el('div', {},
      p.proxy ? null : el('p', { class: 'muted' }, 'This host runs no proxy.'),
      table('Machines in rotation',
        ['Machine', 'Host', 'In rotation', 'In flight', 'Connections', 'Idle', 'Services'],
        p.machines.map((b) => el('tr', { 'data-proxy-machine': b.id },
          el('td', { class: 'mono' }, b.id),
          el('td', {}, b.host || 'this host'),
          el('td', { 'data-rotation': b.in_rotation ? 'yes' : 'no' },
            b.in_rotation ? 'yes' : `no: ${b.why_not || b.state}`),
          el('td', {}, b.in_flight),
          el('td', {}, b.connections),
          el('td', {}, ago(b.idle_secs)),
          el('td', { class: 'mono' }, b.services.join('; ') || 'no public services'))),
        'No machines behind the proxy.'),
      el('h3', {}, 'Starts, autostarts and autostops (last hour)'),
      table('Recent activity', ['Time', 'Machine', 'Host', 'What', 'Took', 'Error'],
        p.activity.slice().reverse().slice(0, 30).map((e) => el('tr', { 'data-activity': e.action },
          el('td', {}, new Date(e.at * 1000).toLocaleTimeString()),
          el('td', { class: 'mono' }, e.machine),
          el('td', {}, e.host || 'this host'),
          el('td', {}, e.action),
          el('td', {}, e.seconds === undefined ? '' : `${(e.seconds * 1000).toFixed(1)} ms`),
          el('td', {}, e.error || ''))),
        'Nothing in the last hour.')));
    const rs = (await api('GET', `/v1/apps/${a}/releases?limit=20`)).releases;
    releases.replaceChildren(table('Releases',
      ['Version', 'Status', 'Reason', 'Image', 'Machines', 'By', 'Created', ''],
      rs.map((r) => el('tr', {},
        el('td', {}, `v${r.version}`, r.stable ? ' (current)' : ''),
        el('td', {}, r.status, r.error ? el('div', { class: 'muted' }, r.error) : null),
        el('td', {}, r.reason),
        el('td', { class: 'mono hide-narrow' }, r.image_ref),
        el('td', {}, (r.machines || []).map((s) => `${s.action} ${s.id || ''}: ${s.outcome || 'pending'}`).join('; ')),
        el('td', { class: 'hide-narrow' }, r.user),
        el('td', { class: 'hide-narrow' }, r.created_at),
        el('td', {}, r.status === 'complete' && !r.stable ? el('button', {
          type: 'button', 'aria-label': `Roll back to v${r.version}`,
          onclick: async () => {
            if (!window.confirm(`Roll ${app} back to v${r.version}?`)) return;
            try {
              await api('POST', `/v1/apps/${a}/releases`, { rollback_to: `v${r.version}` });
              say(`rolling back to v${r.version}`);
            } catch (e) { fail(e); }
          },
        }, 'Roll back') : ''))),
      'No releases: hangar deploy'));
    const [ips, vols0, secrets] = await Promise.all([
      api('GET', `/v1/apps/${a}/ip_assignments`).then((r) => r.ips).catch(() => []),
      api('GET', `/v1/apps/${a}/volumes`).catch(() => []),
      api('GET', `/v1/apps/${a}/secrets`).then((r) => r.secrets).catch(() => []),
    ]);
    const vols = await Promise.all(vols0.map(async (v) => {
      const snaps = await api('GET', `/v1/apps/${a}/volumes/${encodeURIComponent(v.id)}/snapshots`)
        .catch(() => []);
      return { ...v, snaps };
    }));
    extra.replaceChildren(
      table('Addresses', ['Address', 'Region', 'Shared'],
        ips.map((i) => el('tr', {}, el('td', { class: 'mono' }, i.ip), el('td', {}, i.region),
          el('td', {}, i.shared ? 'shared' : 'dedicated'))), 'No public addresses.'),
      table('Volumes', ['ID', 'Name', 'Size', 'State', 'Machine', 'Region', 'Snapshots', ''],
        vols.map((v) => el('tr', { 'data-volume': v.id }, el('td', { class: 'mono' }, v.id),
          el('td', {}, v.name),
          el('td', {}, `${v.size_gb} GB`), el('td', {}, v.state),
          el('td', { class: 'mono' }, v.attached_machine_id || ''), el('td', {}, v.region),
          el('td', {}, v.snaps.length ? `${v.snaps.length}` : 'none'),
          el('td', {}, el('button', {
            type: 'button', 'data-action': 'snapshot', 'aria-label': `Take a snapshot of ${v.id}`,
            onclick: () => snapshot(app, v).then(draw).catch(fail),
          }, 'Take snapshot')))),
        'No volumes.'),
      table('Snapshots', ['Volume', 'Snapshot', 'Taken', 'Size', 'Status', ''],
        vols.flatMap((v) => v.snaps.map((x) => el('tr', { 'data-snapshot': x.id },
          el('td', { class: 'mono' }, v.id), el('td', { class: 'mono' }, x.id),
          el('td', {}, x.created_at), el('td', {}, `${x.size} B`), el('td', {}, x.status),
          el('td', {}, el('button', {
            type: 'button', 'data-action': 'restore',
            'aria-label': `Restore snapshot ${x.id} into a new volume`,
            onclick: () => restore(app, v, x).then(draw).catch(fail),
          }, 'Restore to new volume'))))),
        'No snapshots.'),
      table('Secrets', ['Name', 'Digest'],
        secrets.map((s) => el('tr', {}, el('td', { class: 'mono' }, s.name),
          el('td', { class: 'mono' }, s.digest))), 'No secrets.'));
  };
  await draw();
  follow(app, draw);
}

async function machinePage(app, id) {
  const a = encodeURIComponent(app);
  const base = `/v1/apps/${a}/machines/${encodeURIComponent(id)}`;
  crumbs(['Apps', '#/'], [app, `#/apps/${a}`], [id]);
  const head = el('section', { class: 'card', id: 'machine' });
  const events = el('section', { class: 'card', id: 'events' });
  const logs = el('pre', { id: 'logs', 'aria-label': 'Logs', tabindex: '0' });
  const config = el('pre', { id: 'config' });
  const versions = el('section', { class: 'card', id: 'versions' });
  const usage = el('section', { class: 'card', id: 'usage' });
  $('main').replaceChildren(el('h1', {}, `Machine ${id}`), head, el('h2', {}, 'Usage'), usage,
    el('h2', {}, 'Logs'), logs,
    el('h2', {}, 'Events'), events, el('h2', {}, 'Versions'), versions,
    el('h2', {}, 'Config'), config);
  const draw = async () => {
    const m = await api('GET', base);
    const u = m.config && m.config.guest;
    head.replaceChildren(el('dl', { class: 'facts' },
      el('dt', {}, 'State'), el('dd', { id: 'machine-state' }, stateBadge(m.state)),
      el('dt', {}, 'Name'), el('dd', {}, m.name),
      el('dt', {}, 'Region'), el('dd', {}, m.region),
      el('dt', {}, 'Image'), el('dd', { class: 'mono' }, (m.config && m.config.image) || ''),
      el('dt', {}, 'Private IP'), el('dd', { class: 'mono' }, m.private_ip),
      el('dt', {}, 'Size'), el('dd', {}, u ? `${u.cpus || 1} CPU, ${u.memory_mb || 256} MB` : ''),
      el('dt', {}, 'Checks'), el('dd', {}, checks(m) || 'none'),
      el('dt', {}, 'Updated'), el('dd', {}, m.updated_at)),
    el('p'), machineActions(app, m));
    events.replaceChildren(table('Events', ['Time', 'Type', 'Status', 'Source'],
      (m.events || []).map((e) => el('tr', {},
        el('td', {}, new Date(e.timestamp).toISOString()), el('td', {}, e.type),
        el('td', {}, e.status), el('td', {}, e.source))), 'No events.'));
    config.textContent = JSON.stringify(m.config, null, 2);
    const vs = await api('GET', `${base}/versions`);
    versions.replaceChildren(table('Versions', ['Version', 'Image', 'Current'],
      vs.map((v) => el('tr', {}, el('td', { class: 'mono' }, v.version),
        el('td', { class: 'mono' }, (v.user_config && v.user_config.image) || ''),
        el('td', {}, v.version === m.instance_id ? 'yes' : ''))), 'No versions.'));
    const mu = (await api('GET', `/v1/hangar/apps/${a}/usage`)).machines[id];
    usage.replaceChildren(mu ? el('div', { class: 'plots' },
      chart('CPU', 'cores', mu.cpu_cores, 3), chart('Memory', 'MiB', mu.memory_mb, 1),
      chart('Network in', 'B/s', mu.net_rx_bytes_per_sec, 0),
      chart('Network out', 'B/s', mu.net_tx_bytes_per_sec, 0))
      : el('p', { class: 'muted' }, 'Not running here: no usage to show.'));
  };
  await draw();
  follow(app, draw);
  // Usage moves without state changes: every sample (5 s).
  const every = setInterval(() => draw().catch(fail), 5000);
  leave.push(() => clearInterval(every));
  streamLogs(app, id, logs);
}

// Appends the machine's log lines as they come (following restarts).
function streamLogs(app, id, pre) {
  const ctl = new AbortController();
  leave.push(() => ctl.abort());
  const url = `/v1/hangar/apps/${encodeURIComponent(app)}/logs?machine_id=${encodeURIComponent(id)}&tail=200&follow=true`;
  (async () => {
    const r = await fetch(url, {
      credentials: 'same-origin', signal: ctl.signal, headers: { 'x-hangar-ui': '1' },
    });
    if (!r.ok || !r.body) { pre.textContent = `logs: ${r.status}`; return; }
    const reader = r.body.getReader();
    const dec = new TextDecoder();
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (!line.trim()) continue;
        try {
          const e = JSON.parse(line);
          const stick = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
          pre.append(`${e.timestamp} ${e.message}\n`);
          if (stick) pre.scrollTop = pre.scrollHeight;
        } catch (_) { /* a partial line */ }
      }
    }
  })().catch((e) => { if (e.name !== 'AbortError') pre.append(`\n(logs stopped: ${e.message})\n`); });
}

function fail(e) {
  if (e instanceof NotLoggedIn) { showLogin(); return; }
  say(e.message || String(e), true);
}

async function route() {
  leave.forEach((f) => f());
  leave = [];
  say('');
  const hash = location.hash || '#/';
  const [path, query] = hash.slice(1).split('?');
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  try {
    if (parts[0] === 'login') { showLogin(query === 'failed=1'); return; }
    $('logout').hidden = false;
    if (parts[0] === 'apps' && parts[2] === 'machines' && parts[3]) await machinePage(parts[1], parts[3]);
    else if (parts[0] === 'apps' && parts[1]) await appPage(parts[1]);
    else await appsPage();
    $('main').focus();
  } catch (e) { fail(e); }
}

window.addEventListener('hashchange', route);
route();
