// fleetlet dashboard: reads the manager's REST API with a bearer token kept in sessionStorage.
// Every value from the API is inserted with textContent, never parsed as HTML.
"use strict";

const TOKEN_KEY = "fleetlet.token";
const REFRESH_MS = 5000;
const STATES = ["converged", "progressing", "degraded", "rolledBack", "stale", "unknown"];
// Fleet rows fetched per page, and how many agents the failing-resources column looks up.
const PAGE = 500;
const MAX_FAILING_LOOKUPS = 50;
const RECENT_EVENTS = 50;
// Rollout phases as the API spells them; the fleets page counts fleets in each.
const ROLLOUT_PHASES = ["Progressing", "WaitingApproval", "Paused", "Completed", "Aborted", "RolledBack"];

let timer = null;

function $(id) { return document.getElementById(id); }

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child ?? "")));
  }
  return node;
}

function hashParams() { return new URLSearchParams(location.hash.replace(/^#/, "")); }

// A token in the fragment (#token=...) moves into sessionStorage and leaves the address bar.
function takeTokenFromFragment() {
  const params = hashParams();
  const token = params.get("token");
  if (token) {
    sessionStorage.setItem(TOKEN_KEY, token);
    params.delete("token");
    const rest = params.toString();
    history.replaceState(null, "", location.pathname + (rest ? "#" + rest : ""));
  }
}

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (!token) throw new ApiError(401, "no token");
  const response = await fetch(path, { headers: { Authorization: "Bearer " + token } });
  if (!response.ok) {
    let message = response.statusText;
    try { message = (await response.json()).error.message; } catch (_) { /* keep statusText */ }
    throw new ApiError(response.status, message);
  }
  return response.json();
}

function ago(iso) {
  if (!iso) return "never";
  const seconds = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  if (seconds < 60) return seconds + "s ago";
  if (seconds < 3600) return Math.round(seconds / 60) + "m ago";
  if (seconds < 86400) return Math.round(seconds / 3600) + "h ago";
  return Math.round(seconds / 86400) + "d ago";
}

function badge(text, kind) {
  return el("span", { class: "badge " + kind + "-" + String(text).toLowerCase() }, text);
}

function show(section) {
  for (const id of ["login", "fleet", "fleets", "agent", "error"]) $(id).hidden = id !== section;
  $("logout").hidden = section === "login";
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

async function fleetRows() {
  const rows = [];
  let cursor = null;
  do {
    const query = "limit=" + PAGE + (cursor ? "&cursor=" + encodeURIComponent(cursor) : "");
    const page = await api("/api/v1/agents?" + query);
    rows.push(...page.items);
    cursor = page.nextCursor;
  } while (cursor && rows.length < 20 * PAGE);
  return rows;
}

function failingOf(status) {
  if (!status || !status.resources) return [];
  return Object.entries(status.resources)
    .filter(([, r]) => r.phase === "Failed" || r.phase === "Unsupported")
    .map(([id, r]) => id + (r.error ? " (" + r.error.reason + ")" : ""));
}

// The RolledBack condition: True while the agent runs its last known-good generation, False with
// a reason when a generation missed its deadline and the agent stayed on it.
function rollbackOf(status) {
  return ((status && status.conditions) || []).find((c) => c.type === "RolledBack") || null;
}

// Every page of a cursor-paged list, bounded like the agents list.
async function allPages(path) {
  const items = [];
  let cursor = null;
  do {
    const query = "limit=" + PAGE + (cursor ? "&cursor=" + encodeURIComponent(cursor) : "");
    const page = await api(path + (path.includes("?") ? "&" : "?") + query);
    items.push(...page.items);
    cursor = page.nextCursor;
  } while (cursor && items.length < 20 * PAGE);
  return items;
}

function fleetPath(name) { return "/api/v1/fleets/" + encodeURIComponent(name); }

// The filter's choices: every fleet by name, the chosen one selected. A manager without fleets
// (or a failed read) leaves only "every agent"; the agents table does not depend on it.
async function fillFleetFilter(chosen) {
  let names = [];
  try { names = (await allPages("/api/v1/fleets")).map((f) => f.name); } catch (_) { /* none */ }
  if (chosen && !names.includes(chosen)) names.push(chosen);
  $("fleet-filter").replaceChildren(el("option", { value: "" }, "every agent"),
    ...names.map((name) => el("option", { value: name }, name)));
  $("fleet-filter").value = chosen || "";
}

async function renderFleet() {
  const fleetName = hashParams().get("fleet");
  let rows = await fleetRows();
  // Filtered by fleet: only the devices it selects, with the revision rendered for each and its
  // rollout state.
  const devices = new Map();
  if (fleetName) {
    for (const device of await allPages(fleetPath(fleetName) + "/devices")) {
      devices.set(device.agentId, device);
    }
    rows = rows.filter((row) => devices.has(row.agentId));
  }
  await fillFleetFilter(fleetName);
  $("fleet-title").textContent = fleetName ? "Devices of fleet " + fleetName : "Fleet";
  for (const th of document.querySelectorAll("th.fleet-column")) th.hidden = !fleetName;
  const counts = Object.fromEntries(STATES.map((s) => [s, 0]));
  for (const row of rows) counts[row.state] = (counts[row.state] || 0) + 1;
  $("counts").replaceChildren(
    el("div", { class: "count total", "data-state": "total" },
      el("span", { class: "number", id: "count-total" }, rows.length), el("span", {}, "agents")),
    ...STATES.map((state) => el("div", { class: "count state-" + state.toLowerCase(), "data-state": state },
      el("span", { class: "number", id: "count-" + state }, counts[state]), el("span", {}, state))),
  );
  // Failing resources and rollbacks need each such agent's status; bounded so a bad day stays
  // cheap.
  const failing = {};
  const degraded = rows.filter((r) => r.state === "rolledBack"
    || (r.counts.Failed || 0) + (r.counts.Unsupported || 0) > 0)
    .slice(0, MAX_FAILING_LOOKUPS);
  await Promise.all(degraded.map(async (row) => {
    try {
      const view = await api("/api/v1/agents/" + encodeURIComponent(row.agentId) + "/status");
      const rollback = rollbackOf(view.status);
      const rolledBack = rollback && rollback.status === "True" ? ["rolled back: " + rollback.message] : [];
      failing[row.agentId] = rolledBack.concat(failingOf(view.status));
    } catch (_) { failing[row.agentId] = ["?"]; }
  }));
  fill($("agents").tBodies[0], rows.map((row) => {
    const total = Object.values(row.counts).reduce((a, b) => a + b, 0);
    const link = el("a", { href: "#agent=" + encodeURIComponent(row.agentId) }, row.agentId);
    return el("tr", { "data-agent": row.agentId, "data-state": row.state },
      el("td", {}, link),
      el("td", {}, badge(row.state, "state")),
      el("td", {}, row.desiredGeneration),
      el("td", {}, row.observedGeneration ?? "-"),
      el("td", {}, (row.counts.Ready || 0) + "/" + total),
      el("td", { class: "failing" }, (failing[row.agentId] || []).join(", ")),
      el("td", { title: row.lastSeenAt || "" }, ago(row.lastSeenAt)),
      el("td", {}, Object.entries(row.labels || {}).map(([k, v]) => k + "=" + v).join(", ")),
      ...(fleetName ? deviceCells(devices.get(row.agentId)) : []));
  }));
  show("fleet");
}

// The two fleet columns of a device row: the fleet revision rendered for it and its rollout
// state, with what it names (the parameter missing or invalid, the failure, the other fleets).
function deviceCells(device) {
  const state = device.state || "";
  const why = [device.detail, (device.conflictingFleets || []).length
    ? "fleets " + device.conflictingFleets.join(", ") : null].filter(Boolean).join("; ");
  return [
    el("td", {}, device.revisionRendered ?? "-"),
    el("td", { class: "rollout-state", "data-rollout-state": state },
      badge(state, "rollout"), why ? " " + why : ""),
  ];
}

// A batch's limit as the operator wrote it (1, "25%"), or "rest" for {}.
function batchLimit(fleet, index) {
  const strategy = (fleet.fleet && fleet.fleet.rolloutStrategy) || {};
  const batch = (strategy.batches || [])[index] || {};
  return batch.limit ?? "rest";
}

function batchState(batch) {
  if (batch.finished) return "done";
  return batch.startedAt ? "running" : "waiting";
}

// One fleet: its phase, revisions, the pause reason, and a row per batch with its counts.
function fleetCard(fleet) {
  const phase = fleet.phase || "";
  const devices = Object.values(fleet.devices || {}).reduce((a, b) => a + b, 0);
  const byState = Object.entries(fleet.devices || {}).map(([s, n]) => n + " " + s).join(", ");
  let revision = "revision " + fleet.revision;
  if (fleet.targetRevision !== fleet.revision) revision += ", rolling out " + fleet.targetRevision;
  if (fleet.goodRevision != null && fleet.goodRevision !== fleet.targetRevision) {
    revision += ", last good " + fleet.goodRevision;
  }
  const threshold = ((fleet.fleet || {}).rolloutStrategy || {}).successThreshold;
  const reason = fleet.pauseReason
    ? el("p", { class: "pause-reason" }, "Paused: " + fleet.pauseReason) : "";
  const rows = (fleet.batches || []).map((batch) =>
    el("tr", Object.assign({ "data-batch": batch.index + 1, "data-batch-state": batchState(batch) },
      batch.index === fleet.currentBatch ? { class: "current" } : {}),
      el("td", {}, batch.index + 1),
      el("td", {}, batchLimit(fleet, batch.index)),
      el("td", {}, batch.devices),
      el("td", { class: "succeeded" }, batch.succeeded),
      el("td", { class: "failed" }, batch.failed),
      el("td", {}, batch.pending),
      el("td", {}, batch.deferred),
      el("td", {}, batchState(batch)),
      el("td", {}, progressBar(batch))));
  return el("article", { class: "fleet-card", "data-fleet": fleet.name, "data-phase": phase },
    el("h2", {}, fleet.name + " ", badge(phase, "rollout")),
    el("p", { class: "muted" }, revision + (threshold ? ", success threshold " + threshold : "")
      + " \u00b7 ", el("a", { href: "#fleet=" + encodeURIComponent(fleet.name) },
        devices + " devices"), byState ? " (" + byState + ")" : ""),
    reason,
    el("table", { class: "batches" },
      el("thead", {}, el("tr", {}, ...["Batch", "Limit", "Devices", "Succeeded", "Failed",
        "Pending", "Deferred", "State", "Progress"].map((h) => el("th", {}, h)))),
      el("tbody", {}, ...rows)));
}

// A batch's progress as a bar: succeeded green, failed red, out of its devices. Widths are set
// through the style object: the CSP forbids style attributes.
function progressBar(batch) {
  const total = batch.devices || 0;
  const part = (n, kind) => {
    const span = el("span", { class: "bar-" + kind });
    span.style.width = (total ? (100 * (n || 0)) / total : 0) + "%";
    return span;
  };
  return el("span", { class: "bar", title: (batch.succeeded || 0) + "/" + total + " succeeded" },
    part(batch.succeeded, "succeeded"), part(batch.failed, "failed"));
}

async function renderFleets() {
  const fleets = await allPages("/api/v1/fleets");
  $("fleets-empty").hidden = fleets.length > 0;
  const phases = Object.fromEntries(ROLLOUT_PHASES.map((p) => [p, 0]));
  for (const fleet of fleets) phases[fleet.phase] = (phases[fleet.phase] || 0) + 1;
  $("fleet-counts").replaceChildren(...ROLLOUT_PHASES.map((phase) =>
    el("div", { class: "count rollout-count rollout-" + phase.toLowerCase(), "data-phase": phase },
      el("span", { class: "number", id: "fleets-" + phase }, phases[phase]), el("span", {}, phase))));
  $("fleet-list").replaceChildren(...fleets.map(fleetCard));
  show("fleets");
}

// A resource's drift repairs: "3 (content changed, 2m ago)".
function repairsText(repairs) {
  if (!repairs) return "";
  return repairs.count + " (" + repairs.lastDrift + ", " + ago(repairs.lastAt) + ")";
}

// What an event says; a repair names how often and what drifted, the rest lists the payload.
function eventText(event) {
  const p = event.payload || {};
  if (event.type === "ResourceRepaired") {
    const total = p.totalRepairs !== p.repairs ? " (" + p.totalRepairs + " in all)" : "";
    return p.kind + " drifted and was repaired " + p.repairs + "\u00d7" + total + "; last: " + p.drift;
  }
  return detailsText(p);
}

function detailsText(details) {
  if (!details) return "";
  return Object.entries(details)
    .filter(([, v]) => v !== null && typeof v !== "object")
    .map(([k, v]) => k + "=" + v).join(" ");
}

async function recentEvents(agentPath) {
  // The log pages oldest first; walk it (bounded) and keep the tail.
  let events = [];
  let after = 0;
  for (let i = 0; i < 20; i++) {
    const page = await api(agentPath + "/events?limit=1000&afterSeq=" + after);
    events = events.concat(page.items).slice(-RECENT_EVENTS);
    if (!page.nextCursor || page.items.length === 0) break;
    after = page.items[page.items.length - 1].seq;
  }
  return events.reverse();
}

async function renderAgent(agentId) {
  const path = "/api/v1/agents/" + encodeURIComponent(agentId);
  const [view, events] = await Promise.all([api(path + "/status"), recentEvents(path)]);
  const summary = view.summary;
  $("agent-title").replaceChildren(agentId + " ", badge(summary.state, "state"));
  const info = (view.status && view.status.agent) || {};
  const facts = [
    ["State", summary.state], ["Desired generation", summary.desiredGeneration],
    ["Observed generation", summary.observedGeneration ?? "-"],
    ["Converged", summary.converged ? "yes" : "no"], ["Last seen", ago(summary.lastSeenAt)],
    ["Agent version", info.version || "-"], ["Host", info.hostname || "-"],
    ["Labels", Object.entries(summary.labels || {}).map(([k, v]) => k + "=" + v).join(", ") || "-"],
  ];
  $("agent-summary").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  const rollback = rollbackOf(view.status);
  $("agent-rollback").hidden = !rollback;
  $("agent-rollback").dataset.status = rollback ? rollback.status : "";
  $("agent-rollback").textContent = !rollback ? ""
    : (rollback.status === "True" ? "Rolled back: " : "Rollout " + rollback.reason + ": ") + rollback.message;
  const resources = Object.entries((view.status && view.status.resources) || {});
  fill($("resources").tBodies[0], resources.map(([id, r]) =>
    el("tr", { "data-resource": id, "data-phase": r.phase },
      el("td", {}, id), el("td", {}, r.kind), el("td", {}, badge(r.phase, "phase")),
      el("td", {}, r.generation), el("td", { title: r.since || "" }, ago(r.since)),
      el("td", {}, r.error ? r.error.reason : ""), el("td", {}, r.error ? r.error.message : ""),
      el("td", { class: "repairs", title: r.repairs ? r.repairs.lastAt : "" }, repairsText(r.repairs)),
      el("td", { class: "details" }, detailsText(r.details)))));
  const conditions = (view.status && view.status.conditions) || [];
  fill($("conditions").tBodies[0], conditions.map((c) =>
    el("tr", {}, el("td", {}, c.type), el("td", {}, c.status), el("td", {}, c.reason || ""),
      el("td", {}, c.message || ""))));
  fill($("events").tBodies[0], events.map((e) =>
    el("tr", { "data-seq": e.seq, "data-type": e.type }, el("td", {}, e.seq),
      el("td", { title: e.createdAt }, ago(e.createdAt)),
      el("td", {}, e.type), el("td", {}, e.resourceId || "-"),
      el("td", { class: "details" }, eventText(e)))));
  show("agent");
}

async function refresh() {
  const params = hashParams();
  const agentId = params.get("agent");
  try {
    if (agentId) await renderAgent(agentId);
    else if (params.has("fleets")) await renderFleets();
    else await renderFleet();
    $("error").hidden = true;
    // A token works: a refusal of an earlier one is over.
    $("login-error").textContent = "";
    $("refreshed").textContent = "updated " + new Date().toLocaleTimeString();
    document.body.dataset.loaded = "true";
  } catch (error) {
    if (error.status === 401 || error.status === 403) {
      sessionStorage.removeItem(TOKEN_KEY);
      // Without a token the next refreshes fail with "no token": the message about the refused
      // token stays until a token works (or the user forgets it), instead of vanishing with the
      // next refresh.
      if (!(error.status === 401 && error.message === "no token")) {
        $("login-error").textContent = "the manager refused this token: " + error.message;
      }
      show("login");
    } else {
      showError("cannot load: " + error.message);
    }
  }
}

function start() {
  takeTokenFromFragment();
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    $("token").value = "";
    refresh();
  });
  $("logout").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    $("login-error").textContent = "";
    show("login");
  });
  $("fleet-filter").addEventListener("change", () => {
    const name = $("fleet-filter").value;
    location.hash = name ? "fleet=" + encodeURIComponent(name) : "";
  });
  window.addEventListener("hashchange", () => { takeTokenFromFragment(); refresh(); });
  refresh();
  timer = setInterval(refresh, REFRESH_MS);
}

document.addEventListener("DOMContentLoaded", start);
