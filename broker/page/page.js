// The broker's status page: polls status.json about once a second and
// renders it. Every value from the broker (follower names, reasons, paths,
// document values) reaches the page as text nodes only (never innerHTML), so
// nothing in a document or a name can become markup.
'use strict';
(function () {
  const REFRESH_MS = 1000;
  const byId = (id) => document.getElementById(id);

  // An element with attributes and children; strings become text nodes.
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (name === 'class') node.className = value;
      else node.setAttribute(name, value);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  const time = (millis) => (millis ? new Date(millis).toISOString() : '-');
  const short = (sha) => (sha || '').slice(0, 12);
  const badge = (state, text) => el('span', { class: 'badge state-' + state }, text || state.replace('_', ' '));

  const seconds = (millis) => (millis / 1000).toFixed(1) + ' s';

  // What was last rendered, by section: a section is redrawn only when its
  // data changed, so an operator can select and copy text between polls.
  const drawn = {};
  function section(name, data, draw) {
    const key = JSON.stringify(data);
    if (drawn[name] === key) return;
    drawn[name] = key;
    draw(data);
  }

  function renderSummary(s) {
    byId('summary').replaceChildren(
      'revision ', el('strong', { id: 'revision' }, s.revision),
      ' · sha256 ', el('code', {}, short(s.sha256)),
      ' · lineage ', el('code', {}, s.lineage));
    const contact = s.backend_connected
      ? el('span', {}, 'connected')
      : el('span', { class: 'bad' }, 'OUT OF REACH: ' + s.backend_error + ' (serving revision ' + s.revision + ' from memory; writes fail)');
    byId('backend').replaceChildren('backend ', el('code', {}, s.backend), ': ', contact);
  }

  function renderCanary(canary) {
    const box = byId('canary');
    const body = box.querySelector('tbody');
    if (!canary) {
      box.hidden = true;
      body.replaceChildren();
      return;
    }
    box.hidden = false;
    const selected = canary.followers.length;
    const applied = canary.followers.filter((f) => f.state === 'applied').length;
    let bake = 'no bake time: promote or abort by hand';
    if (canary.bake_millis_left !== null) bake = 'bake time left ' + seconds(canary.bake_millis_left);
    else if (canary.bake_ms) bake = 'bake time ' + seconds(canary.bake_ms) + ', from when every selected follower applied it';
    byId('canary-summary').replaceChildren(
      'candidate ', el('strong', { id: 'candidate-revision' }, canary.candidate_revision),
      ' over stable ', el('strong', {}, canary.stable_revision),
      ' · selector ', el('code', {}, canary.selector),
      ' · ', el('span', { id: 'canary-progress' }, applied + ' of ' + selected + ' selected followers applied it'),
      ' · ', el('span', { id: 'canary-bake' }, bake),
      ' · started ', time(canary.started_unix_millis));
    body.replaceChildren(...canary.followers.map((f) => el('tr', { 'data-state': f.state },
      el('td', {}, f.name),
      el('td', {}, f.host || '(this broker)'),
      el('td', { class: 'num' }, f.pid),
      el('td', {}, badge(f.state)),
      el('td', {}, f.reason))));
  }

  function renderFollowers(data) {
    const followers = data.followers;
    const ready = followers.filter((f) => f.ready).length;
    byId('followers-summary').replaceChildren(
      followers.length === 0
        ? 'No follower is connected.'
        : ready + ' of ' + followers.length + ' followers serve revision ' + data.revision + '.');
    byId('followers').querySelector('tbody').replaceChildren(...followers.map((f) => {
      const rejected = f.rejected_revision
        ? el('span', { class: 'bad' }, 'revision ' + f.rejected_revision + ': ', el('span', { class: 'reason' }, f.rejected_reason))
        : '';
      const stale = f.stale ? ' (as of ' + time(f.as_of_unix_millis) + ')' : '';
      return el('tr', { 'data-state': f.state },
        el('td', {}, f.name, f.canary ? ' ' : null, f.canary ? badge('canary', 'canary') : null),
        el('td', {}, f.host || '(this broker)'),
        el('td', { class: 'num' }, f.pid),
        el('td', { class: 'num' }, f.uid),
        el('td', { class: 'num' }, f.applied_revision),
        el('td', { class: 'num' }, f.lag),
        el('td', {}, badge(f.state), stale),
        el('td', {}, f.ready ? badge('ready', 'ready') : badge('not_ready', 'not ready')),
        el('td', {}, rejected),
        el('td', {}, time(f.connected_since_unix_millis)));
    }));
  }

  function renderDiff(diff) {
    if (!diff) return el('p', { class: 'quiet' }, 'The first retained revision: nothing before it to compare with.');
    const against = 'against revision ' + diff.against + ': ';
    if (diff.skipped) return el('p', { class: 'quiet' }, against + diff.skipped);
    if (diff.changes.length === 0) return el('p', { class: 'quiet' }, against + 'no key changed.');
    const value = (v) => (v === null || v === undefined ? el('span', { class: 'quiet' }, '(hidden)') : el('span', { class: 'value mono' }, v));
    const rows = diff.changes.map((c) => el('tr', { class: 'op-' + c.op },
      el('td', {}, c.op),
      el('td', { class: 'mono' }, c.path),
      c.op === 'added' ? el('td', {}) : el('td', { class: 'old' }, value(c.old)),
      c.op === 'removed' ? el('td', {}) : el('td', { class: 'new' }, value(c.new))));
    const table = el('table', { class: 'diff' },
      el('caption', { class: 'quiet' }, against + diff.changes.length + (diff.changes.length === 1 ? ' change' : ' changes')),
      el('thead', {}, el('tr', {}, el('th', {}, 'Change'), el('th', {}, 'Path'), el('th', {}, 'Old'), el('th', {}, 'New'))),
      el('tbody', {}, ...rows));
    if (!diff.omitted) return table;
    return el('div', {}, table, el('p', { class: 'quiet' }, diff.omitted + ' more changes not listed.'));
  }

  function renderHistory(data) {
    const error = byId('history-error');
    error.hidden = !data.history_error;
    error.replaceChildren(data.history_error ? 'Cannot read the history: ' + data.history_error : '');
    byId('history').replaceChildren(...data.history.map((r) => el('div', { class: 'revision', 'data-revision': r.revision },
      el('h3', {}, 'revision ' + r.revision),
      el('p', { class: 'quiet' },
        time(r.unix_millis), ' · ', r.source,
        ' · writer uid ', r.writer_uid === null ? '-' : r.writer_uid,
        ' · ', r.size_bytes, ' bytes · sha256 ', el('code', {}, short(r.sha256)),
        r.note ? ' · ' : null, r.note ? el('span', { class: 'note' }, r.note) : null),
      renderDiff(r.diff))));
  }

  function render(s) {
    section('summary', [s.revision, s.sha256, s.lineage, s.backend, s.backend_connected, s.backend_error], () => renderSummary(s));
    section('canary', s.canary, renderCanary);
    section('followers', { revision: s.revision, followers: s.followers }, renderFollowers);
    section('history', { history: s.history, history_error: s.history_error }, renderHistory);
  }

  async function poll() {
    try {
      const response = await fetch('status.json', { cache: 'no-store' });
      if (!response.ok) throw new Error('status.json answered ' + response.status);
      render(await response.json());
      const updated = byId('updated');
      updated.className = 'quiet';
      updated.replaceChildren('updated ' + new Date().toLocaleTimeString());
    } catch (err) {
      const updated = byId('updated');
      updated.className = 'bad';
      updated.replaceChildren('cannot reach the broker (' + err.message + '); the page shows what it last heard');
    } finally {
      setTimeout(poll, REFRESH_MS);
    }
  }

  poll();
})();
