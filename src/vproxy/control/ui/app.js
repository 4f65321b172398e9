// The vproxy dashboard: polls /api/v1/status every second and renders it in place
// (rows are keyed and updated, not rebuilt, so buttons survive refreshes). Actions go
// through the REST API with the same bearer token. No libraries, no network but this
// origin.
"use strict";

(() => {
  const API = "/api/v1";
  const MODULE = API + "/module";
  const TOKEN_KEY = "vproxy.token";
  const PERIOD_MS = 1000;
  const MAX_TRANSITIONS = 30;
  const DEFAULT_WEIGHT = 10;

  let token = sessionStorage.getItem(TOKEN_KEY) || "";
  let paused = false;
  let inflight = false;
  let waitingForToken = false;
  let timer = null;
  const previous = new Map(); // listener key -> {t, bytesIn, bytesOut} for rates

  class AuthError extends Error {}

  const $ = (id) => document.getElementById(id);

  // -- small DOM helpers ----------------------------------------------------------------
  function h(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k === "data") Object.assign(node.dataset, v);
      else node.setAttribute(k, v);
    }
    for (const c of children) node.append(c);
    return node;
  }

  function setText(node, text) {
    const s = String(text);
    if (node.textContent !== s) node.textContent = s;
  }

  function setClass(node, cls) {
    if (node.className !== cls) node.className = cls;
  }

  // Make `container`'s keyed children match `items`, in order: existing elements are
  // updated, new ones made, stale ones removed.
  function sync(container, items, key, make, update) {
    const existing = new Map();
    for (const child of Array.from(container.children)) existing.set(child.dataset.key, child);
    let i = 0;
    for (const item of items) {
      const k = key(item);
      let node = existing.get(k);
      if (node) existing.delete(k);
      else {
        node = make(item);
        node.dataset.key = k;
      }
      update(node, item);
      if (container.children[i] !== node) container.insertBefore(node, container.children[i] || null);
      i++;
    }
    for (const node of existing.values()) node.remove();
  }

  function row(n, numeric) {
    const tr = document.createElement("tr");
    for (let i = 0; i < n; i++) tr.append(h("td", numeric && numeric.includes(i) ? { class: "num" } : {}));
    return tr;
  }

  function cells(tr, values) {
    values.forEach((v, i) => setText(tr.cells[i], v));
  }

  // -- formatting -------------------------------------------------------------------------
  function fmtBytes(n) {
    if (n === null || n === undefined) return "—";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let v = n;
    let u = 0;
    while (v >= 1024 && u < units.length - 1) {
      v /= 1024;
      u++;
    }
    return u === 0 ? `${v} B` : `${v.toFixed(1)} ${units[u]}`;
  }

  function fmtRate(n) {
    return n === null ? "—" : fmtBytes(Math.round(n)) + "/s";
  }

  function fmtDuration(s) {
    if (s === null || s === undefined) return "";
    s = Math.max(0, Math.floor(s));
    const pad = (x) => String(x).padStart(2, "0");
    if (s < 60) return `${s}s`;
    if (s < 3600) return `${Math.floor(s / 60)}m ${pad(s % 60)}s`;
    if (s < 86400) return `${Math.floor(s / 3600)}h ${pad(Math.floor((s % 3600) / 60))}m`;
    return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
  }

  function fmtTime(epoch) {
    return new Date(epoch * 1000).toLocaleTimeString([], { hour12: false });
  }

  function fmtInt(n) {
    return n === null || n === undefined ? "—" : Number(n).toLocaleString("en-US");
  }

  // -- the API ------------------------------------------------------------------------------
  async function api(method, path, body) {
    const headers = {};
    if (token) headers.Authorization = "Bearer " + token;
    const init = { method, headers, cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const resp = await fetch(path, init);
    if (resp.status === 401) {
      askForToken();
      throw new AuthError("a bearer token is needed");
    }
    const text = await resp.text();
    let data = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch {
        data = text;
      }
    }
    if (!resp.ok) throw new Error((data && data.message) || `${resp.status} ${resp.statusText}`);
    return data;
  }

  const enc = encodeURIComponent;
  const serverPath = (group, server) => `${MODULE}/server-group/${enc(group)}/server/${enc(server)}`;

  // -- token --------------------------------------------------------------------------------
  function askForToken() {
    waitingForToken = true;
    $("token-form").hidden = false;
    setState("token needed", "pill pill-wait");
    $("token-input").focus();
  }

  $("token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    token = $("token-input").value.trim();
    sessionStorage.setItem(TOKEN_KEY, token);
    $("token-input").value = "";
    $("token-form").hidden = true;
    $("forget-token").hidden = !token;
    waitingForToken = false;
    poll();
  });

  $("forget-token").addEventListener("click", () => {
    token = "";
    sessionStorage.removeItem(TOKEN_KEY);
    $("forget-token").hidden = true;
    poll();
  });
  $("forget-token").hidden = !token;

  $("pause").addEventListener("click", () => {
    paused = !paused;
    $("pause").textContent = paused ? "Resume" : "Pause";
    if (paused) setState("paused", "pill pill-wait");
    else poll();
  });

  // -- feedback -----------------------------------------------------------------------------
  let toastTimer = null;
  function toast(message, bad) {
    const t = $("toast");
    t.textContent = message;
    t.className = bad ? "toast bad" : "toast";
    t.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => (t.hidden = true), bad ? 6000 : 3000);
  }

  function setState(text, cls) {
    const s = $("conn-state");
    setText(s, text);
    setClass(s, cls);
  }

  // -- rendering ----------------------------------------------------------------------------
  function render(snap) {
    renderListeners(snap);
    renderUpstreams(snap);
    renderTransitions(snap);
    renderLoops(snap);
    renderProcesses(snap);
    renderSessions(snap);
    setText($("updated"), "updated " + fmtTime(snap.time));
  }

  function rate(key, t, bytesIn, bytesOut) {
    const prev = previous.get(key);
    previous.set(key, { t, bytesIn, bytesOut });
    if (!prev || t <= prev.t) return [null, null];
    const dt = t - prev.t;
    return [Math.max(0, bytesIn - prev.bytesIn) / dt, Math.max(0, bytesOut - prev.bytesOut) / dt];
  }

  function renderListeners(snap) {
    const items = [
      ...snap.listeners,
      ...snap.controllers.map((c) => ({ ...c, controller: true })),
    ];
    const body = $("listeners").tBodies[0];
    sync(
      body,
      items,
      (l) => `${l.kind}/${l.name}`,
      () => row(12, [5, 6, 7, 8, 9, 10, 11]),
      (tr, l) => {
        if (l.controller) {
          const proto = l.kind === "http-controller" ? "http (API)" : "resp (redis)";
          cells(tr, [l.kind, l.name, l.address, proto, "—", "—", "—", "—", "—", "—", "—", "—"]);
          return;
        }
        const [rin, rout] = rate(`${l.kind}/${l.name}`, snap.time, l.bytes_in, l.bytes_out);
        cells(tr, [
          l.kind,
          l.name,
          l.address,
          l.protocol,
          l.upstream,
          fmtInt(l.sessions),
          fmtInt(l.accepted),
          fmtRate(rin),
          fmtRate(rout),
          fmtBytes(l.bytes_in),
          fmtBytes(l.bytes_out),
          fmtInt(l.denied),
        ]);
      },
    );
    $("listeners-empty").hidden = items.length > 0;
  }

  function renderUpstreams(snap) {
    const groups = new Map(snap.server_groups.map((g) => [g.name, g]));
    const held = new Set();
    const blocks = snap.upstreams.map((u) => {
      u.server_groups.forEach((hg) => held.add(hg.name));
      return {
        key: "u/" + u.name,
        title: `upstream ${u.name}`,
        groups: u.server_groups.filter((hg) => groups.has(hg.name)).map((hg) => ({ ...groups.get(hg.name), weight: hg.weight })),
      };
    });
    const loose = snap.server_groups.filter((g) => !held.has(g.name));
    if (loose.length) blocks.push({ key: "-", title: "server groups in no upstream", groups: loose });
    sync(
      $("upstreams"),
      blocks,
      (b) => b.key,
      () => h("div", { class: "upstream" }, h("h3"), h("div", { class: "groups" })),
      (node, b) => {
        setText(node.firstChild, b.title);
        sync(
          node.lastChild,
          b.groups,
          (g) => g.name,
          makeGroup,
          updateGroup,
        );
      },
    );
    $("upstreams-empty").hidden = blocks.length > 0;
  }

  function makeGroup() {
    const table = h(
      "table",
      { class: "grid compact servers" },
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          h("th", { text: "Server" }),
          h("th", { text: "Address" }),
          h("th", { text: "Health" }),
          h("th", { class: "num", text: "Weight" }),
          h("th", { class: "num", text: "Active" }),
          h("th", { class: "num", text: "Bytes in" }),
          h("th", { class: "num", text: "Bytes out" }),
          h("th", { class: "num", text: "Check" }),
          h("th", { class: "num", text: "Failures" }),
          h("th", { class: "act" }),
        ),
      ),
      h("tbody"),
    );
    return h("div", { class: "group" }, h("div", { class: "group-head" }), table);
  }

  function updateGroup(node, g) {
    const head = node.firstChild;
    const hc = g.health_check;
    const parts = [
      ["name", `server-group ${g.name}`],
      ["muted", g.weight !== undefined ? `weight ${g.weight}` : ""],
      ["muted", `method ${g.method}`],
      ["muted", `check every ${hc.period} ms, timeout ${hc.timeout} ms, up ${hc.up} / down ${hc.down}`],
    ].filter((p) => p[1]);
    sync(
      head,
      parts,
      (p) => p[0] + ":" + p[1].split(" ")[0],
      (p) => h("span", { class: p[0] }),
      (span, p) => setText(span, p[1]),
    );
    sync(
      node.querySelector("tbody"),
      g.servers,
      (s) => s.name,
      makeServerRow,
      (tr, s) => updateServerRow(tr, s, g.name),
    );
  }

  function makeServerRow() {
    const tr = row(10, [3, 4, 5, 6, 7, 8]);
    tr.className = "server";
    const health = tr.cells[2];
    health.append(h("span", { class: "badge state" }), h("span", { class: "badge drained", text: "DRAINED" }), h("span", { class: "since" }));
    tr.cells[9].className = "act";
    tr.cells[9].append(h("button", { type: "button", class: "btn" }));
    return tr;
  }

  function updateServerRow(tr, s, group) {
    tr.dataset.group = group;
    tr.dataset.server = s.name;
    tr.dataset.up = s.up ? "1" : "0";
    setText(tr.cells[0], s.name);
    setText(tr.cells[1], s.address);
    const [state, drained, since] = tr.cells[2].children;
    setText(state, s.up ? "UP" : "DOWN");
    setClass(state, "badge state " + (s.up ? "up" : "down"));
    drained.hidden = s.weight !== 0;
    setText(since, s.changed_ago_s === null ? "" : "for " + fmtDuration(s.changed_ago_s));
    setText(tr.cells[3], fmtInt(s.weight));
    setText(tr.cells[4], fmtInt(s.active));
    setText(tr.cells[5], fmtBytes(s.bytes_in));
    setText(tr.cells[6], fmtBytes(s.bytes_out));
    setText(tr.cells[7], s.latency_ms === null ? "—" : `${s.latency_ms.toFixed(1)} ms`);
    setText(tr.cells[8], fmtInt(s.connect_failures));
    const btn = tr.cells[9].firstChild;
    const drain = s.weight !== 0;
    btn.dataset.action = drain ? "drain" : "undrain";
    btn.dataset.group = group;
    btn.dataset.server = s.name;
    btn.dataset.weight = String(s.drained_from || DEFAULT_WEIGHT);
    setText(btn, drain ? "Drain" : "Undrain");
    setClass(btn, drain ? "btn btn-quiet" : "btn");
    btn.title = drain
      ? "Set the weight to 0: no new sessions; running ones go on"
      : `Restore weight ${btn.dataset.weight}`;
  }

  function renderTransitions(snap) {
    const items = snap.transitions.slice(0, MAX_TRANSITIONS);
    sync(
      $("transitions").tBodies[0],
      items,
      (t) => `${t.time}/${t.group}/${t.server}/${t.up}`,
      () => {
        const tr = row(4);
        tr.cells[3].append(h("span", { class: "badge" }));
        return tr;
      },
      (tr, t) => {
        setText(tr.cells[0], fmtTime(t.time));
        setText(tr.cells[1], `${t.group} / ${t.server}`);
        setText(tr.cells[2], t.address);
        const b = tr.cells[3].firstChild;
        setText(b, t.up ? "UP" : "DOWN");
        setClass(b, "badge " + (t.up ? "up" : "down"));
      },
    );
    $("transitions-empty").hidden = items.length > 0;
  }

  function renderLoops(snap) {
    sync(
      $("loops").tBodies[0],
      snap.event_loops,
      (l) => `${l.group}/${l.name}`,
      () => row(3, [2]),
      (tr, l) => cells(tr, [l.group, l.name, fmtInt(l.sessions)]),
    );
    const log = snap.access_log;
    setText(
      $("access-log"),
      log
        ? `Access log: ${log.destination} — ${fmtInt(log.written)} lines written, ${fmtInt(log.dropped)} dropped`
        : "Access log: off",
    );
  }

  // With workers N only: each process (worker 0 is the master), one row each.
  function renderProcesses(snap) {
    const items = snap.processes || [];
    sync(
      $("processes").tBodies[0],
      items,
      (p) => String(p.worker),
      () => {
        const tr = row(5, [2, 3, 4]);
        tr.cells[1].append(h("span", { class: "badge" }));
        return tr;
      },
      (tr, p) => {
        setText(tr.cells[0], p.worker === 0 ? "0 (master)" : String(p.worker));
        const badge = tr.cells[1].firstChild;
        setText(badge, p.up ? "UP" : "DOWN");
        setClass(badge, "badge " + (p.up ? "up" : "down"));
        setText(tr.cells[2], fmtInt(p.restarts));
        setText(tr.cells[3], fmtInt(p.sessions));
        setText(tr.cells[4], fmtInt(p.accepted));
      },
    );
    $("processes-box").hidden = items.length === 0;
  }

  function renderSessions(snap) {
    sync(
      $("sessions").tBodies[0],
      snap.sessions,
      (s) => `${s.listener_kind}/${s.listener}/${s.id}`,
      () => {
        const tr = row(7, [0, 4, 5]);
        tr.cells[6].className = "act";
        tr.cells[6].append(h("button", { type: "button", class: "btn btn-danger", text: "Close", "data-action": "close" }));
        return tr;
      },
      (tr, s) => {
        cells(tr, [
          s.id,
          `${s.listener_kind} ${s.listener}`,
          s.client || "—",
          s.server ? `${s.group} / ${s.server}` : "—",
          fmtBytes(s.bytes_in),
          fmtBytes(s.bytes_out),
        ]);
        const btn = tr.cells[6].firstChild;
        btn.dataset.kind = s.listener_kind;
        btn.dataset.listener = s.listener;
        btn.dataset.connection = s.connection;
        btn.title = `force-remove connection ${s.connection}`;
      },
    );
    const shown = snap.sessions.length;
    setText(
      $("sessions-count"),
      shown < snap.sessions_total ? `(${shown} of ${snap.sessions_total})` : `(${snap.sessions_total})`,
    );
    $("sessions-empty").hidden = shown > 0;
  }

  // -- actions ------------------------------------------------------------------------------
  document.addEventListener("click", async (ev) => {
    const btn = ev.target.closest("button[data-action]");
    if (!btn) return;
    const d = { ...btn.dataset };
    btn.disabled = true;
    try {
      if (d.action === "drain") {
        await api("PUT", serverPath(d.group, d.server), { weight: 0 });
        toast(`Drained ${d.group} / ${d.server}: weight 0`);
      } else if (d.action === "undrain") {
        const weight = Number(d.weight) || DEFAULT_WEIGHT;
        await api("PUT", serverPath(d.group, d.server), { weight });
        toast(`Restored ${d.group} / ${d.server}: weight ${weight}`);
      } else if (d.action === "close") {
        await api("DELETE", `${MODULE}/${enc(d.kind)}/${enc(d.listener)}/connection/${enc(d.connection)}`);
        toast(`Closed ${d.connection}`);
      }
    } catch (e) {
      if (!(e instanceof AuthError)) toast(e.message, true);
    } finally {
      btn.disabled = false;
    }
    poll();
  });

  // -- the refresh loop ------------------------------------------------------------------
  async function poll() {
    if (inflight || paused) return;
    clearTimeout(timer);
    timer = null;
    inflight = true;
    try {
      const snap = await api("GET", API + "/status");
      render(snap);
      setState("live", "pill pill-ok");
    } catch (e) {
      if (!(e instanceof AuthError)) setState("unreachable: " + e.message, "pill pill-bad");
    } finally {
      inflight = false;
      if (!paused && !waitingForToken) timer = setTimeout(poll, PERIOD_MS);
    }
  }

  poll();
})();
