// vigie operator console. No framework, no build: the DOM is built with textContent only
// (alert titles and details come from devices and must never become markup).
"use strict";
(() => {
  const TOKEN_KEY = "vigie.token";
  const SOUND_KEY = "vigie.sound";
  const SEVERITY_RANK = { critical: 0, major: 1, minor: 2, info: 3 };
  const SEVERITY_FR = { critical: "critique", major: "majeure", minor: "mineure", info: "info" };
  const STATE_FR = { open: "ouverte", acknowledged: "acquittée", resolved: "résolue" };
  const ACTION_FR = {
    opened: "ouverte", repeated: "répétée", acknowledged: "acquittée", resolved: "résolue",
    commented: "commentaire", escalated: "escaladée", reopened: "rouverte",
    unacknowledged: "acquittement annulé", assigned: "assignée", silenced: "mise en silence",
    unsilenced: "fin du silence",
  };
  const CAMERA_FR = { ok: "OK", degraded: "dégradée", offline: "hors ligne", unknown: "inconnue" };
  const SNAPSHOT_EVERY = 30000; // ms between refreshes of a visible tile's picture
  const RESOLVED_LINGER = 8000; // ms a resolved alert stays visible, struck through

  const $ = (id) => document.getElementById(id);
  const state = {
    token: null, sites: new Map(), alerts: new Map(), cameras: new Map(), selected: null,
    site: "", seq: null, ws: null, retry: 0, buffer: null, fresh: new Set(), live: false,
    images: new Map(), // camera key → {url, at}
  };

  // --- helpers -------------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "dataset") Object.assign(node.dataset, v);
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  const time = (iso) => iso ? new Date(iso).toLocaleString("fr-FR", {
    day: "2-digit", month: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit",
  }) : "—";

  class ApiError extends Error {
    constructor(status, body) {
      super((body && body.error && body.error.message) || `HTTP ${status}`);
      this.status = status;
    }
  }

  async function api(path, options = {}) {
    const headers = { Authorization: `Bearer ${state.token}` };
    if (options.body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(path, {
      method: options.method || "GET", headers, cache: "no-store",
      body: options.body !== undefined ? JSON.stringify(options.body) : undefined,
    });
    if (response.status === 401) {
      if (state.live) logout("Jeton refusé (expiré ou révoqué) : reconnectez-vous.");
      throw new ApiError(401, null);
    }
    if (options.blob) {
      if (!response.ok) throw new ApiError(response.status, null);
      return response.blob();
    }
    const body = await response.json().catch(() => null);
    if (!response.ok) throw new ApiError(response.status, body);
    return body;
  }

  function siteName(id) {
    const site = state.sites.get(id);
    return site ? site.name : id;
  }

  const visible = (site) => !state.site || site === state.site;

  // --- login ---------------------------------------------------------------------------

  async function login(token) {
    state.token = token;
    const sites = await api("/api/v1/sites");
    sessionStorage.setItem(TOKEN_KEY, token);
    state.live = true;
    for (const s of sites.items) state.sites.set(s.id, s);
    $("login").hidden = true;
    $("app").hidden = false;
    fillSiteFilter();
    connect(); // first: what changes while the lists load is buffered, then applied
    await Promise.all([loadAlerts(), loadCameras()]);
    flushBuffer();
    setInterval(refreshSnapshots, SNAPSHOT_EVERY);
  }

  function logout(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    state.token = null;
    state.live = false;
    if (state.ws) { state.ws.onclose = null; state.ws.close(); }
    for (const { url } of state.images.values()) URL.revokeObjectURL(url);
    location.hash = "";
    if (message) sessionStorage.setItem("vigie.message", message);
    location.reload();
  }

  function showLogin() {
    $("app").hidden = true;
    $("login").hidden = false;
    const message = sessionStorage.getItem("vigie.message");
    sessionStorage.removeItem("vigie.message");
    $("login-error").textContent = message || "";
    $("token").focus();
  }

  // --- data ----------------------------------------------------------------------------

  async function loadAlerts() {
    const fresh = new Map();
    let cursor = null;
    for (let page = 0; page < 10; page++) { // at most 5000 unresolved alerts on screen
      const query = new URLSearchParams({ state: "open,acknowledged", limit: "500" });
      if (cursor) query.set("cursor", cursor);
      const body = await api(`/api/v1/alerts?${query}`);
      for (const a of body.items) fresh.set(a.id, a);
      cursor = body.next_cursor;
      if (!cursor) break;
    }
    state.alerts = fresh;
    renderAlerts();
  }

  async function loadCameras() {
    const body = await api("/api/v1/cameras");
    state.cameras = new Map(body.items.map((c) => [`${c.site}/${c.id}`, c]));
    renderWall();
    refreshSnapshots();
  }

  // --- live feed -----------------------------------------------------------------------

  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const query = new URLSearchParams({ token: state.token });
    if (state.seq !== null) query.set("since", String(state.seq));
    const ws = new WebSocket(`${scheme}://${location.host}/api/v1/stream?${query}`);
    state.ws = ws;
    if (state.buffer === null && state.seq === null) state.buffer = [];
    setConn("connecting", "connexion…");
    ws.onmessage = (event) => {
      const message = JSON.parse(event.data);
      if (state.buffer !== null && message.type !== "feed.hello") state.buffer.push(message);
      else handle(message);
    };
    ws.onclose = (event) => {
      state.ws = null;
      if (event.code === 1008) { logout("Jeton révoqué ou expiré : reconnectez-vous."); return; }
      setConn("lost", "flux interrompu, reconnexion…");
      const delay = Math.min(30000, 1000 * 2 ** state.retry++) * (0.5 + Math.random());
      setTimeout(() => { if (state.token) connect(); }, delay);
    };
  }

  function flushBuffer() {
    const pending = state.buffer || [];
    state.buffer = null;
    for (const message of pending) handle(message);
  }

  function setConn(kind, text) {
    $("conn").dataset.state = kind;
    $("conn").textContent = text;
  }

  function handle(message) {
    if (typeof message.seq === "number") state.seq = message.seq;
    switch (message.type) {
      case "feed.hello":
        state.retry = 0;
        if (state.seq === null || message.since === null) state.seq = message.head;
        setConn("live", "en direct");
        return;
      case "feed.gap": // too much missed: reload what is current
        state.seq = message.head;
        loadAlerts();
        loadCameras();
        return;
      case "camera.state":
        cameraChanged(message.camera);
        return;
      default:
        if (message.type && message.type.startsWith("alert.") && message.alert) {
          alertChanged(message.type.slice(6), message.alert);
        }
    }
  }

  function alertChanged(action, alert) {
    const known = state.alerts.get(alert.id);
    state.alerts.set(alert.id, alert);
    if (action === "opened" && !known) {
      state.fresh.add(alert.id);
      if (visible(alert.site)) beep(alert.severity);
    }
    if (alert.state === "resolved") {
      setTimeout(() => {
        const now = state.alerts.get(alert.id);
        if (now && now.state === "resolved") { state.alerts.delete(alert.id); renderAlerts(); }
      }, RESOLVED_LINGER);
    }
    renderAlerts();
    if (state.selected === alert.id) showDetail(alert.id);
  }

  function cameraChanged(change) {
    const key = `${change.site}/${change.id}`;
    const camera = state.cameras.get(key) || { id: change.id, site: change.site, name: change.id };
    Object.assign(camera, { state: change.state, reasons: change.reasons, since: change.since });
    state.cameras.set(key, camera);
    renderWall();
    if (onScreen(key)) loadSnapshot(key);
  }

  // --- sound ---------------------------------------------------------------------------

  let audio = null;
  function beep(severity) {
    if (!$("sound").checked) return;
    audio = audio || new AudioContext();
    const count = severity === "critical" ? 3 : severity === "major" ? 2 : 1;
    for (let i = 0; i < count; i++) {
      const osc = audio.createOscillator();
      const gain = audio.createGain();
      osc.frequency.value = severity === "critical" ? 880 : 660;
      gain.gain.value = 0.15;
      osc.connect(gain).connect(audio.destination);
      const at = audio.currentTime + i * 0.3;
      osc.start(at);
      osc.stop(at + 0.18);
    }
  }

  // --- rendering: alerts ---------------------------------------------------------------

  function sortedAlerts() {
    return [...state.alerts.values()].filter((a) => visible(a.site)).sort((a, b) =>
      (a.state === "open" ? 0 : 1) - (b.state === "open" ? 0 : 1)
      || SEVERITY_RANK[a.severity] - SEVERITY_RANK[b.severity]
      || b.last_seen_at.localeCompare(a.last_seen_at));
  }

  function renderAlerts() {
    const list = sortedAlerts();
    const items = list.map((a) => el("li", {
      class: state.fresh.has(a.id) ? "alert new" : "alert", tabindex: 0, role: "button",
      dataset: { id: a.id, severity: a.severity, state: a.state },
      "aria-selected": state.selected === a.id ? "true" : "false",
      onclick: () => select(a.id),
      onkeydown: (e) => { if (e.key === "Enter") select(a.id); },
    },
    el("span", { class: "badge", dataset: { severity: a.severity } }, SEVERITY_FR[a.severity]),
    el("span", { class: "title" }, a.title),
    el("span", { class: "state-badge", dataset: { state: a.state } }, STATE_FR[a.state]),
    el("span", { class: "meta" },
      `${siteName(a.site)} · ${a.source} · ${time(a.last_seen_at)}`,
      a.count > 1 ? ` · ×${a.count}` : "")));
    $("alerts").replaceChildren(...items);
    $("no-alerts").hidden = items.length > 0;
    const open = list.filter((a) => a.state !== "resolved");
    $("alert-count").textContent = String(open.length);
    const bySeverity = {};
    for (const a of open) bySeverity[a.severity] = (bySeverity[a.severity] || 0) + 1;
    $("summary").replaceChildren(...Object.keys(SEVERITY_RANK).filter((s) => bySeverity[s])
      .map((s) => el("span", { class: "badge", dataset: { severity: s } },
        `${bySeverity[s]} ${SEVERITY_FR[s]}`)));
  }

  function select(id) {
    state.selected = id;
    state.fresh.delete(id);
    renderAlerts();
    showDetail(id);
  }

  // --- rendering: detail ---------------------------------------------------------------

  let detailRequest = 0;
  async function showDetail(id) {
    const request = ++detailRequest;
    let alert;
    try {
      alert = await api(`/api/v1/alerts/${encodeURIComponent(id)}`);
    } catch (error) {
      if (request === detailRequest) {
        $("detail").replaceChildren(el("p", { class: "error" }, error.message));
      }
      return;
    }
    if (request !== detailRequest) return; // a newer selection won
    const draft = $("comment") ? $("comment").value : "";
    const comment = el("textarea", { id: "comment", placeholder: "Commentaire (facultatif pour acquitter ou résoudre)", maxlength: 4000 });
    comment.value = draft;
    const status = el("p", { id: "action-status", class: "error", role: "status" });
    const act = (label, path, required, primary) => el("button", {
      type: "button", class: primary ? "primary" : null, dataset: { action: path },
      onclick: async (event) => {
        const text = comment.value.trim();
        if (required && !text) { status.textContent = "Écrivez un commentaire."; return; }
        event.target.disabled = true;
        try {
          const updated = await api(`/api/v1/alerts/${alert.id}/${path}`, {
            method: "POST", body: text ? { comment: text } : {},
          });
          comment.value = "";
          state.alerts.set(updated.id, updated);
          renderAlerts();
          showDetail(updated.id);
        } catch (error) {
          status.textContent = error.message;
          event.target.disabled = false;
        }
      },
    }, label);
    const actions = el("div", { class: "actions" },
      alert.state === "open" ? act("Acquitter", "ack", false, true) : null,
      alert.state !== "resolved" ? act("Résoudre", "resolve", false, alert.state !== "open") : null,
      act("Commenter", "comments", true, false));
    const snapshots = el("div", { class: "snapshots" });
    for (const snap of alert.snapshots || []) {
      const img = el("img", { alt: `Image ${snap.camera || ""}` });
      snapshots.append(el("figure", {}, img,
        el("figcaption", {}, `${snap.camera || ""} · ${time(snap.taken_at)}`)));
      if (snap.url && snap.url.startsWith("/api/v1/")) {
        api(snap.url, { blob: true }).then((blob) => { img.src = URL.createObjectURL(blob); })
          .catch(() => { img.alt = "image indisponible"; });
      }
    }
    const history = el("ol", { class: "history" }, (alert.history || []).map((h) => el("li", {},
      el("span", { class: "when" }, time(h.at)),
      `${ACTION_FR[h.action] || h.action} — ${h.actor || "vigie"}`,
      h.comment ? el("span", { class: "comment" }, h.comment) : null)));
    $("detail").className = "";
    $("detail").dataset.id = alert.id;
    $("detail").replaceChildren(...[
      el("span", { class: "badge", dataset: { severity: alert.severity } }, SEVERITY_FR[alert.severity]),
      " ", el("span", { class: "state-badge", id: "detail-state", dataset: { state: alert.state } }, STATE_FR[alert.state]),
      el("h3", {}, alert.title),
      el("dl", {},
        el("dt", {}, "Collège"), el("dd", {}, siteName(alert.site)),
        el("dt", {}, "Source"), el("dd", {}, `${alert.source} (${alert.kind})`),
        el("dt", {}, "Ouverte"), el("dd", {}, time(alert.opened_at)),
        el("dt", {}, "Dernière"), el("dd", {}, `${time(alert.last_seen_at)} · ${alert.count} fois`),
        alert.acknowledged_by ? [el("dt", {}, "Acquittée"), el("dd", {}, `${alert.acknowledged_by}, ${time(alert.acknowledged_at)}`)] : null,
        alert.resolved_by ? [el("dt", {}, "Résolue"), el("dd", {}, `${alert.resolved_by}, ${time(alert.resolved_at)}`)] : null,
        alert.escalation_level ? [el("dt", {}, "Escalade"), el("dd", {}, `niveau ${alert.escalation_level}`)] : null,
        alert.silenced ? [el("dt", {}, "Silence"), el("dd", {}, "maintenance en cours")] : null),
      comment, actions, status,
      snapshots.childElementCount ? el("h2", {}, "Images") : null, snapshots,
      el("h2", {}, "Historique"), history,
    ].filter((child) => child !== null));
  }

  // --- rendering: camera wall ----------------------------------------------------------

  function renderWall() {
    const bySite = new Map();
    for (const [key, c] of state.cameras) {
      if (!visible(c.site)) continue;
      if (!bySite.has(c.site)) bySite.set(c.site, []);
      bySite.get(c.site).push([key, c]);
    }
    const groups = [...bySite.keys()].sort().map((site) => el("div", { class: "site-group" },
      el("h3", {}, siteName(site)),
      el("div", { class: "tiles" }, bySite.get(site).sort((a, b) => a[1].id.localeCompare(b[1].id))
        .map(([key, c]) => tile(key, c)))));
    $("wall").replaceChildren(...groups);
    const cams = [...state.cameras.values()].filter((c) => visible(c.site));
    const bad = cams.filter((c) => c.state === "offline" || c.state === "degraded").length;
    $("camera-count").textContent = `${cams.length}${bad ? ` · ${bad} en défaut` : ""}`;
  }

  function tile(key, c) {
    const image = state.images.get(key);
    return el("figure", { class: "tile", dataset: { key, state: c.state || "unknown" } },
      image ? el("img", { src: image.url, alt: c.name || c.id })
        : el("div", { class: "noimg" }, "pas d'image"),
      el("figcaption", { class: "cap" },
        el("strong", {}, c.name || c.id),
        el("span", { class: "state" }, CAMERA_FR[c.state] || c.state),
        c.reasons && c.reasons.length && c.state !== "offline" ? ` · ${c.reasons.join(", ")}` : "",
        c.since ? ` · depuis ${time(c.since)}` : ""));
  }

  async function loadSnapshot(key) {
    const camera = state.cameras.get(key);
    if (!camera || !visible(camera.site)) return;
    try {
      const blob = await api(`/api/v1/cameras/${encodeURIComponent(camera.site)}/${encodeURIComponent(camera.id)}/snapshot`, { blob: true });
      const old = state.images.get(key);
      state.images.set(key, { url: URL.createObjectURL(blob), at: Date.now() });
      if (old) URL.revokeObjectURL(old.url);
      const img = document.querySelector(`.tile[data-key="${CSS.escape(key)}"] img, .tile[data-key="${CSS.escape(key)}"] .noimg`);
      if (img) img.replaceWith(el("img", { src: state.images.get(key).url, alt: camera.name || camera.id }));
    } catch (error) {
      if (error.status !== 404) console.warn("snapshot", key, error.message);
    }
  }

  // Only the tiles on screen: every snapshot view is audited, and a wall of a whole
  // département must not fetch thousands of pictures every 30 s.
  function onScreen(key) {
    const node = document.querySelector(`.tile[data-key="${CSS.escape(key)}"]`);
    if (!node) return false;
    const r = node.getBoundingClientRect();
    const pane = $("wall-pane").getBoundingClientRect();
    return r.bottom > Math.max(0, pane.top) && r.top < Math.min(innerHeight, pane.bottom)
      && r.right > 0 && r.left < innerWidth;
  }

  function refreshSnapshots(onlyMissing) {
    if (document.hidden || !state.token) return;
    for (const key of state.cameras.keys()) {
      if (onScreen(key) && !(onlyMissing === true && state.images.has(key))) loadSnapshot(key);
    }
  }

  // --- site filter ---------------------------------------------------------------------

  function fillSiteFilter() {
    const select = $("site-filter");
    const sites = [...state.sites.values()].sort((a, b) => a.name.localeCompare(b.name, "fr"));
    select.replaceChildren(el("option", { value: "" }, "Tous les collèges"),
      ...sites.map((s) => el("option", { value: s.id }, `${s.name} — ${s.commune || s.id}`)));
    const wanted = new URLSearchParams(location.hash.slice(1)).get("site") || "";
    state.site = state.sites.has(wanted) ? wanted : "";
    select.value = state.site;
  }

  // --- wiring --------------------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", () => {
    $("login-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const token = $("token").value.trim();
      $("login-error").textContent = "";
      try {
        await login(token);
        $("token").value = "";
      } catch (error) {
        state.token = null;
        $("login-error").textContent = error.status === 401 || error.status === 429
          ? "Jeton refusé." : `Connexion impossible : ${error.message}`;
      }
    });
    $("logout").addEventListener("click", () => logout(""));
    $("site-filter").addEventListener("change", (event) => {
      state.site = event.target.value;
      location.hash = state.site ? `site=${encodeURIComponent(state.site)}` : "";
      renderAlerts();
      renderWall();
      refreshSnapshots();
    });
    $("sound").checked = localStorage.getItem(SOUND_KEY) === "on";
    $("sound").addEventListener("change", (event) => {
      localStorage.setItem(SOUND_KEY, event.target.checked ? "on" : "off");
      if (event.target.checked) beep("info");
    });
    document.addEventListener("visibilitychange", refreshSnapshots);
    let scrolled = null;
    const showMissing = () => {
      clearTimeout(scrolled);
      scrolled = setTimeout(() => refreshSnapshots(true), 300);
    };
    $("wall-pane").addEventListener("scroll", showMissing);
    window.addEventListener("scroll", showMissing);
    window.addEventListener("resize", showMissing);
    const saved = sessionStorage.getItem(TOKEN_KEY);
    if (saved) {
      login(saved).catch(() => { sessionStorage.removeItem(TOKEN_KEY); showLogin(); });
    } else {
      showLogin();
    }
  });
})();
