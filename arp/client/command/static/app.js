// The ARP console: a single page with hash routes, talking to the command-mode API next to it.
//
//   #/                      Claude projects (history)
//   #/project/<path>        one project's history sessions
//   #/history/<uuid>        one history session's messages (Claude; #/history/codex/<uuid>: Codex),
//                           with "Continue here"
//   #/sessions              sessions started through ARP
//   #/session/<id>          one session: live output, cancel, follow-up
//   #/changes/<id>          what a session changed: files and diffs
//   #/new[?project=<path>]  start a session
//   #/approvals             what the agents wait for you to answer (approvals and questions)
//   #/devices               access tokens: list, revoke, share a link (QR code)   (admin)
//   #/signin/<reason>       no valid access token: why, and a field to paste a link

import { api, onUnauthorized } from "./api.js";
import { SessionStream } from "./stream.js";
import { Transcript, h, historyMessage, pill, timeEl } from "./render.js";
import { approvalCard, notify, onPending, watchPending } from "./approvals.js";
import { pushPanel, registerWorker } from "./push.js";
import { changesView } from "./diff.js";

const view = document.getElementById("view");
const banner = document.getElementById("banner");
let health = null;
let healthReady = Promise.resolve();
let routeGen = 0; // bumped on every navigation; a view that awaited something checks it is still current
let cleanup = null; // the current view's teardown (closes its stream, stops its timers)

const EXECUTORS = ["Claude", "Codex", "Gemini"];
const MODELS = ["sonnet", "opus", "haiku", "gpt-5-codex", "gpt-5", "gemini-2.5-pro", "gemini-2.5-flash"];
const MODES = ["plan", "default", "acceptEdits", "auto", "bypassPermissions"];
const FINAL = new Set(["completed", "failed", "cancelled", "interrupted"]);
const SCOPES = [
  ["view", "read sessions, history, live output and what changed"],
  ["prompt", "start, continue and cancel sessions (from any project under --project-root)"],
  ["approve", "allow or deny what the agent asks to run, and answer its questions"],
  ["admin", "manage devices and links (implies everything)"],
];
const EXPIRIES = [
  ["1 hour", 3600],
  ["1 day", 86400],
  ["7 days", 7 * 86400],
  ["30 days", 30 * 86400],
  ["Never", ""],
];
const REASONS = {
  missing: "This console needs an access token. Open the Public URL arpc printed (it ends in &access=…), or a share link from the owner.",
  malformed: "That access link is not valid: its token is malformed. Check that the whole link was copied.",
  unknown: "That access link is not valid: arpc does not know its token.",
  expired: "This access link has expired. Ask the owner for a new one.",
  revoked: "This device's access was revoked. Ask the owner for a new link.",
};
let me = null; // the access token this console uses (GET /api/me)
let signedOut = null; // the reason the API gave for a 401, until the page is reloaded with a token

onUnauthorized((reason) => {
  if (signedOut) return;
  signedOut = reason;
  paintNav();
  if (!location.hash.startsWith("#/signin")) location.hash = `#/signin/${encodeURIComponent(reason)}`;
});

function showBanner(message) {
  banner.textContent = message;
  banner.hidden = !message;
}

function errorBox(id) {
  return h("div", { class: "error", id, role: "alert" });
}

function fail(box, error) {
  box.textContent = error && error.message ? error.message : String(error);
}

let baseTitle = "ARP console";
let waitingCount = 0; // approvals and questions waiting for an answer: "(2)" in the tab's title

function setTitle(text) {
  baseTitle = text;
  document.title = `${waitingCount ? `(${waitingCount}) ` : ""}${text}`;
}

onPending((pending) => {
  waitingCount = pending.length;
  setTitle(baseTitle);
  if (navigator.setAppBadge) (waitingCount ? navigator.setAppBadge(waitingCount) : navigator.clearAppBadge()).catch(() => {});
});

function title(text, ...rest) {
  setTitle(`${text} · ARP console`);
  return h("div", { class: "title" }, h("h1", {}, text), ...rest);
}

function setNav(name) {
  for (const a of document.querySelectorAll("[data-nav]")) a.classList.toggle("active", a.dataset.nav === name);
}

function loading() {
  return h("p", { class: "muted loading" }, "Loading…");
}

async function loadMe() {
  try {
    me = await api("api/me");
  } catch (e) {
    me = null;
  }
  paintNav();
}

/** Show only the nav items this console's token can use (none once it was refused). */
function paintNav() {
  document.getElementById("nav-devices").hidden = !can("admin");
  document.querySelector("[data-nav=new]").hidden = !can("prompt");
  for (const name of ["projects", "sessions"]) document.querySelector(`[data-nav=${name}]`).hidden = !can("view");
}

/** Whether this console's token has ``scope`` (unknown: assume so, arpc decides anyway). */
function can(scope) {
  if (signedOut) return false;
  return !me || me.allows.includes(scope);
}

async function loadHealth() {
  const el = document.getElementById("health");
  if (signedOut) {
    el.textContent = "no access";
    return;
  }
  try {
    health = await api("api/health");
    const found = Object.entries(health.executors).filter(([, e]) => e.found).map(([n]) => n);
    el.textContent = `arpc ${health.version} · ${found.join(", ") || "no agent CLIs found"} · ${health.sessions.running} running`;
    el.title = "";
    showBanner("");
  } catch (e) {
    if (e.status === 401) {
      el.textContent = "no access";
      return;
    }
    el.textContent = "not connected";
    showBanner(`Cannot reach arpc. ${e.message}`);
  }
}

// -- projects and history ---------------------------------------------------------------------

async function projectsView() {
  setNav("projects");
  const box = errorBox("projects-error");
  const list = h("div", { class: "list", id: "projects" }, loading());
  view.replaceChildren(title("Projects", h("span", { class: "muted" }, "Claude Code and Codex history on this machine")), box, list);
  try {
    const [data, codex] = await Promise.all([api("api/claude/projects"), api("api/codex/sessions?limit=500").catch(() => ({ sessions: [] }))]);
    const projects = new Map(data.projects.map((p) => [p.path, { ...p, agents: ["Claude"] }]));
    for (const s of codex.sessions) {
      if (!s.projectPath) continue;
      const p = projects.get(s.projectPath) || { path: s.projectPath, sessionCount: 0, lastActivity: null, agents: [] };
      p.sessionCount += 1;
      if (!p.agents.includes("Codex")) p.agents.push("Codex");
      if (!p.lastActivity || s.lastActivity > p.lastActivity) p.lastActivity = s.lastActivity;
      projects.set(s.projectPath, p);
    }
    const all = [...projects.values()].filter((p) => p.path).sort((a, b) => String(b.lastActivity).localeCompare(String(a.lastActivity)));
    if (!all.length) {
      const start = can("prompt") ? h("a", { class: "button primary", href: "#/new", id: "start-first" }, "Start a session") : null;
      list.replaceChildren(h("div", { class: "empty first-run" }, h("p", {}, "No Claude Code or Codex history on this machine yet."), start));
      return;
    }
    list.replaceChildren(
      ...all.map((p) =>
        h(
          "a",
          { class: "row", href: `#/project/${encodeURIComponent(p.path)}`, "data-project": p.path },
          h("div", { class: "main" }, h("div", { class: "path" }, p.path), h("div", { class: "sub" }, p.agents.join(" · "))),
          h("div", { class: "meta" }, `${p.sessionCount} session${p.sessionCount === 1 ? "" : "s"}`, " · ", timeEl(p.lastActivity)),
        ),
      ),
    );
  } catch (e) {
    list.replaceChildren();
    fail(box, e);
  }
}

async function projectView(path) {
  setNav("projects");
  const box = errorBox("project-error");
  const list = h("div", { class: "list", id: "history-sessions" }, loading());
  const start = h("a", { class: "button primary", href: `#/new?project=${encodeURIComponent(path)}` }, "New session here");
  view.replaceChildren(
    h("nav", { class: "crumbs" }, h("a", { href: "#/" }, "Projects"), " / "),
    title(path, start),
    box,
    list,
  );
  try {
    const q = `project=${encodeURIComponent(path)}&limit=200`;
    const [data, codex] = await Promise.all([api(`api/claude/sessions?${q}`), api(`api/codex/sessions?${q}`).catch(() => ({ sessions: [] }))]);
    const sessions = [...data.sessions.map((s) => ({ ...s, agent: "Claude" })), ...codex.sessions.map((s) => ({ ...s, agent: "Codex" }))];
    sessions.sort((a, b) => String(b.lastActivity).localeCompare(String(a.lastActivity)));
    if (!sessions.length) {
      list.replaceChildren(h("p", { class: "empty" }, "No sessions in this project."));
      return;
    }
    list.replaceChildren(
      ...sessions.map((s) =>
        h(
          "a",
          { class: "row", href: historyHash(s.agent, s.id), "data-history": s.id, "data-agent": s.agent },
          h(
            "div",
            { class: "main" },
            h("div", { class: "name" }, s.title || s.firstPrompt || s.id),
            s.firstPrompt && s.firstPrompt !== s.title ? h("div", { class: "sub" }, s.firstPrompt) : null,
          ),
          h("div", { class: "meta" }, h("span", { class: "agent-tag" }, s.agent), " ", s.messageCount === null ? "" : `${s.messageCount} messages · `, timeEl(s.lastActivity)),
        ),
      ),
    );
  } catch (e) {
    list.replaceChildren();
    fail(box, e);
  }
}

function historyHash(agent, id) {
  return agent === "Claude" ? `#/history/${encodeURIComponent(id)}` : `#/history/${agent.toLowerCase()}/${encodeURIComponent(id)}`;
}

/** The form under a history session: a prompt, and "Continue here" resumes it through arpc. */
function continueForm(agent, id) {
  const prompt = h("textarea", { id: "continue-prompt", name: "prompt", rows: 3, placeholder: "What should the agent do next?" });
  const go = h("button", { class: "primary", type: "submit", id: "continue" }, "Continue here");
  const err = errorBox("continue-error");
  const form = h(
    "form",
    { class: "follow-up continue", id: "continue-form" },
    h("label", { for: "continue-prompt" }, `Continue this ${agent} session from here`),
    prompt,
    h("div", { class: "row-actions" }, go),
    err,
  );
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    go.disabled = true;
    err.textContent = "";
    try {
      const s = await api("api/sessions", { method: "POST", body: { resume: id, executor: agent, prompt: prompt.value } });
      location.hash = `#/session/${encodeURIComponent(s.id)}`;
    } catch (e) {
      go.disabled = false;
      fail(err, e);
    }
  });
  prompt.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) form.requestSubmit();
  });
  return form;
}

async function historyView(id, agent = "Claude") {
  setNav("projects");
  const box = errorBox("history-error");
  const crumbs = h("nav", { class: "crumbs" }, h("a", { href: "#/" }, "Projects"), " / ");
  const list = h("div", { class: "transcript", id: "messages" }, loading());
  const heading = title("Session");
  const gen = routeGen;
  view.replaceChildren(crumbs, heading, box, list);
  try {
    const data = await api(`api/${agent.toLowerCase()}/sessions/${encodeURIComponent(id)}?limit=2000`);
    if (gen !== routeGen) return;
    if (data.projectPath) {
      crumbs.append(h("a", { href: `#/project/${encodeURIComponent(data.projectPath)}` }, data.projectPath), " /");
      if (can("prompt")) {
        const top = h("a", { class: "button primary", href: "#continue-form", id: "continue-top" }, "Continue here");
        top.addEventListener("click", (ev) => {
          ev.preventDefault(); // a hash link would leave the route
          const field = document.getElementById("continue-prompt");
          field.scrollIntoView({ block: "center" });
          field.focus();
        });
        heading.append(top);
      }
    }
    heading.querySelector("h1").textContent = `${agent} session ${id.slice(0, 8)}`;
    const nodes = data.messages.flatMap(historyMessage);
    list.replaceChildren(...(nodes.length ? nodes : [h("p", { class: "empty" }, "This session has no messages.")]));
    if (data.total > data.messages.length) list.append(h("p", { class: "muted" }, `Showing ${data.messages.length} of ${data.total} messages.`));
    if (data.projectPath && can("prompt")) view.append(continueForm(agent, id));
  } catch (e) {
    list.replaceChildren();
    fail(box, e);
  }
}

// -- ARP sessions -----------------------------------------------------------------------------

function sessionRow(s, waiting = 0) {
  const needs = waiting || s.pendingApprovals || 0;
  return h(
    "a",
    { class: `row${needs ? " needs" : ""}`, href: `#/session/${encodeURIComponent(s.id)}`, "data-session": s.id, "data-needs": needs || undefined },
    h(
      "div",
      { class: "main" },
      h("div", { class: "name" }, needs ? h("span", { class: "needs-mark" }, `Needs you${needs > 1 ? ` (${needs})` : ""}`) : null, s.prompt),
      s.lastMessage ? h("div", { class: "last-message" }, s.lastMessage) : null,
      h("div", { class: "sub" }, `${s.executor}${s.model ? " · " + s.model : ""}${s.resumedFrom ? " · continued" : ""} · ${s.projectPath}`),
    ),
    h("div", { class: "meta" }, pill(s.status), " ", timeEl(s.updatedAt)),
  );
}

async function sessionsView() {
  setNav("sessions");
  const box = errorBox("sessions-error");
  const list = h("div", { class: "list", id: "sessions" }, loading());
  const start = can("prompt") ? h("a", { class: "button primary", href: "#/new" }, "New session") : null;
  view.replaceChildren(title("Sessions", start), box, list);
  let timer = null;
  let alive = true;
  let waiting = [];
  let data = null;
  const paintList = () => {
    const by = new Map();
    for (const a of waiting) by.set(a.sessionId, (by.get(a.sessionId) || 0) + 1);
    list.replaceChildren(
      ...(data.sessions.length ? data.sessions.map((s) => sessionRow(s, by.get(s.id))) : [h("p", { class: "empty" }, "No sessions yet. Start one with New session.")]),
    );
  };
  const off = onPending((pending) => {
    waiting = pending;
    if (data && alive) paintList();
  });
  cleanup = () => {
    alive = false;
    off();
    clearTimeout(timer);
  };
  const refresh = async () => {
    try {
      data = await api("api/sessions?limit=100");
      if (!alive) return;
      box.textContent = "";
      paintList();
    } catch (e) {
      if (alive) fail(box, e);
    }
    if (alive) timer = setTimeout(refresh, 3000);
  };
  await refresh();
}

async function sessionView(id) {
  setNav("sessions");
  const box = errorBox("session-error");
  const h1 = h("h1", {}, "Session");
  const status = h("span", { id: "status" });
  const conn = h("span", { class: "conn muted", id: "conn" });
  const controls = h("span", { class: "controls", id: "controls" });
  const facts = h("dl", { class: "facts" });
  const transcript = h("div", { class: "transcript", id: "events" }, loading());
  const earlier = h("section", { class: "earlier", id: "earlier", hidden: true });
  const actions = h("div", { class: "actions", id: "actions" });
  const actionError = errorBox("action-error");
  const controlError = errorBox("control-error");
  view.replaceChildren(
    h("nav", { class: "crumbs" }, h("a", { href: "#/sessions" }, "Sessions"), " / "),
    h("div", { class: "title session-title" }, h1, status, controls),
    controlError,
    facts,
    box,
    earlier,
    transcript,
    actions,
  );
  const gen = routeGen;
  let session;
  try {
    session = await api(`api/sessions/${encodeURIComponent(id)}`);
  } catch (e) {
    transcript.replaceChildren();
    fail(box, e);
    return;
  }
  if (gen !== routeGen) return; // the user went elsewhere meanwhile
  transcript.replaceChildren();
  if (session.resumedFrom) showEarlier(earlier, session);
  const render = new Transcript(transcript, session.executor, { canAnswer: can("approve") });
  let lastSeq = 0;
  let stream = null;
  let alive = true;
  let idleCheck = null; // the timer that looks for turns started from another device
  cleanup = () => {
    alive = false;
    clearInterval(idleCheck);
    if (stream) stream.dispose();
  };

  const addEvent = (event) => {
    if (event.seq <= lastSeq) return; // the stream and API answers may overlap: no repeats
    lastSeq = event.seq;
    const el = document.scrollingElement;
    const nearBottom = el.scrollTop + el.clientHeight >= el.scrollHeight - 120;
    render.add(event);
    if (event.kind === "status") {
      if (stream && session.status === "running") notify(`Session ${event.status}`, session.prompt.slice(0, 120), `#/session/${id}`, `session-${id}`);
      session.status = event.status;
      session.error = event.error;
      paint();
    }
    if (nearBottom && stream) el.scrollTop = el.scrollHeight;
    if (event.kind === "approval" && event.approval.status === "pending") {
      // the agent waits for this: bring the card (and its buttons) above the live bar
      const card = transcript.querySelector(`[data-approval="${CSS.escape(event.approval.id)}"]`);
      if (card && card.dataset.status === "pending") card.scrollIntoView({ block: "center" });
    }
  };

  const paint = () => {
    setTitle(`${session.prompt.slice(0, 40)} · ARP console`);
    h1.textContent = session.prompt.split("\n")[0].slice(0, 120);
    status.replaceChildren(pill(session.status));
    const cost = session.costUsd !== null && session.costUsd !== undefined;
    const changes = h("a", { href: `#/changes/${encodeURIComponent(id)}`, id: "changes-link" }, "Files and diffs");
    const from = session.resumedFrom;
    const rows = [
      from ? ["Continued", h("a", { href: historyHash(from.executor, from.id), id: "resumed-from" }, from.title || `${from.executor} session ${from.id.slice(0, 8)}`)] : null,
      ["Agent", `${session.executor}${session.model ? " · " + session.model : ""} · ${session.permissionMode}`],
      ["Project", h("a", { href: `#/project/${encodeURIComponent(session.projectPath)}` }, session.projectPath)],
      ["Started", timeEl(session.createdAt)],
      session.createdBy ? ["Started by", h("span", { id: "started-by" }, session.createdBy.name)] : null,
      ["Turns", String(Array.isArray(session.turns) ? session.turns.length : session.turns)],
      cost ? ["Cost", `$${Number(session.costUsd).toFixed(4)}`] : null,
      session.error && session.status !== "cancelled" ? ["Error", h("span", { class: "error-text" }, session.error)] : null,
      ["Changes", changes],
    ];
    facts.replaceChildren(...rows.filter(Boolean).flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
    paintActions();
  };

  const refresh = async () => {
    try {
      const fresh = await api(`api/sessions/${encodeURIComponent(id)}?since=${lastSeq}`);
      if (!alive) return;
      const events = fresh.events;
      delete fresh.events;
      Object.assign(session, fresh);
      for (const event of events) addEvent(event);
      paint();
      // a turn started elsewhere (a follow-up from another device): follow it live here too
      if (session.status === "running" && (!stream || stream.stopped)) watch();
    } catch (e) {
      if (alive) fail(box, e);
    }
  };
  // while the session is not running, look every few seconds whether another device continued it
  idleCheck = setInterval(() => {
    if (!alive) clearInterval(idleCheck);
    else if (session.status !== "running" && document.visibilityState === "visible") refresh();
  }, 5000);

  const watch = () => {
    if (stream) stream.dispose();
    stream = new SessionStream(id, lastSeq, {
      onEvent: addEvent,
      onState: (kind, text) => {
        conn.dataset.state = kind;
        conn.textContent = { live: "● live", connecting: "connecting…", reconnecting: "reconnecting…" }[kind] ?? "";
        if (kind === "reconnecting" && text) conn.textContent = text;
        if (kind === "gone") box.textContent = text;
        if (kind === "denied") {
          box.textContent = text;
          conn.textContent = "access ended";
        }
        if (kind === "ended") refresh();
      },
    });
    window.arpConsoleStream = stream; // for diagnostics from the browser's console
  };

  const paintActions = () => {
    if (!can("prompt")) {
      controls.replaceChildren();
      actions.classList.toggle("live", session.status === "running");
      const bar = session.status === "running" ? [pill("running"), conn] : [];
      actions.replaceChildren(h("div", { class: session.status === "running" ? "live-bar" : "note", id: "view-only" }, ...bar, h("span", { class: "muted" }, "This device may only watch.")));
      return;
    }
    if (session.status === "running") {
      const cancel = h("button", { class: "danger", id: "cancel", type: "button" }, "Cancel");
      cancel.addEventListener("click", async () => {
        if (!confirm("Cancel this session? The agent and everything it started will be stopped.")) return;
        cancel.disabled = true;
        cancel.textContent = "Cancelling…";
        actionError.textContent = "";
        try {
          await api(`api/sessions/${encodeURIComponent(id)}`, { method: "DELETE" });
          await refresh();
        } catch (e) {
          cancel.disabled = false;
          cancel.textContent = "Cancel";
          fail(actionError, e);
        }
      });
      controls.replaceChildren();
      actions.classList.add("live");
      actionError.textContent = "";
      actions.replaceChildren(h("div", { class: "live-bar" }, pill("running"), conn, cancel), actionError);
      return;
    }
    actions.classList.remove("live");
    if (actions.querySelector(".live-bar")) actions.replaceChildren();
    if (actions.querySelector("form")) return; // keep what the user is typing
    const remove = h("button", { class: "danger subtle", type: "button", id: "delete" }, "Delete");
    remove.addEventListener("click", async () => {
      if (!confirm("Delete this session's record? (The agent's own history files stay.)")) return;
      controlError.textContent = "";
      try {
        await api(`api/sessions/${encodeURIComponent(id)}`, { method: "DELETE" });
        location.hash = "#/sessions";
      } catch (e) {
        fail(controlError, e); // beside the Delete button that was tapped
      }
    });
    controls.replaceChildren(remove);
    const prompt = h("textarea", { id: "follow-up", rows: 3, placeholder: "Continue this conversation…" });
    const send = h("button", { class: "primary", type: "submit", id: "send" }, "Send follow-up");
    const err = errorBox("follow-up-error");
    const form = h("form", { class: "follow-up" }, h("label", { for: "follow-up" }, "Follow-up prompt"), prompt, h("div", { class: "row-actions" }, send), err);
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      send.disabled = true;
      err.textContent = "";
      try {
        const s = await api(`api/sessions/${encodeURIComponent(id)}/messages`, { method: "POST", body: { prompt: prompt.value } });
        const events = s.events || [];
        delete s.events;
        Object.assign(session, s);
        actions.replaceChildren();
        for (const event of events) addEvent(event);
        paint();
        if (session.status === "running") watch();
      } catch (e) {
        send.disabled = false;
        fail(err, e);
      }
    });
    prompt.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) form.requestSubmit();
    });
    actions.replaceChildren(form, actionError);
  };

  for (const event of session.events) addEvent(event);
  delete session.events;
  paint();
  if (session.status === "running") watch();
}

/** A continued session's earlier messages, from the agent's own history (before this session). */
async function showEarlier(section, session) {
  const from = session.resumedFrom;
  try {
    const data = await api(`api/${from.executor.toLowerCase()}/sessions/${encodeURIComponent(from.id)}?limit=2000`);
    // the agent's history grows with this session's own turns: only what came before it
    const before = data.messages.filter((m) => !m.timestamp || m.timestamp < session.createdAt);
    const nodes = before.flatMap(historyMessage);
    if (!nodes.length) return;
    const SHOWN = 6;
    const hidden = nodes.slice(0, Math.max(0, nodes.length - SHOWN));
    const more = hidden.length ? h("button", { type: "button", class: "subtle", id: "earlier-more" }, `Show ${hidden.length} earlier`) : null;
    const box = h("div", { class: "transcript earlier-messages" }, ...nodes.slice(-SHOWN));
    if (more) {
      more.addEventListener("click", () => {
        box.prepend(...hidden);
        more.remove();
      });
    }
    const heading = h("h2", {}, "Earlier in this conversation", h("small", { class: "muted" }, ` · ${from.executor} history`));
    section.replaceChildren(...[heading, more, box, h("div", { class: "earlier-end muted" }, "Continued here")].filter(Boolean));
    section.hidden = false;
  } catch (e) {
    section.replaceChildren(h("p", { class: "muted" }, `The earlier messages could not be read: ${e.message}`));
    section.hidden = false;
  }
}

// -- what changed -----------------------------------------------------------------------------

async function changesPage(id) {
  setNav("sessions");
  const box = errorBox("changes-error");
  const list = h("div", { class: "changes", id: "changes" }, loading());
  const crumbs = h("nav", { class: "crumbs" }, h("a", { href: "#/sessions" }, "Sessions"), " / ", h("a", { href: `#/session/${encodeURIComponent(id)}`, id: "back-to-session" }, "Session"), " /");
  const reload = h("button", { type: "button", class: "subtle", id: "changes-reload" }, "Refresh");
  view.replaceChildren(crumbs, title("What changed", reload), box, list);
  const gen = routeGen;
  const load = async () => {
    box.textContent = "";
    try {
      const [session, data] = await Promise.all([api(`api/sessions/${encodeURIComponent(id)}`), api(`api/sessions/${encodeURIComponent(id)}/changes`)]);
      if (gen !== routeGen) return;
      crumbs.querySelector("#back-to-session").textContent = session.prompt.split("\n")[0].slice(0, 60);
      list.replaceChildren(...changesView(data));
    } catch (e) {
      if (gen !== routeGen) return;
      list.replaceChildren();
      fail(box, e);
    }
  };
  reload.addEventListener("click", load);
  await load();
}

// -- what needs you ---------------------------------------------------------------------------

async function approvalsView() {
  setNav("approvals");
  const list = h("div", { class: "list approvals", id: "approvals" }, loading());
  const recent = h("div", { class: "list approvals recent", id: "recent" });
  const box = errorBox("approvals-error");
  const nudge = h("button", { type: "button", id: "enable-notifications", class: "subtle" }, "Notify me in the background");
  const canNotify = typeof Notification !== "undefined" && Notification.permission === "default";
  nudge.hidden = !canNotify;
  nudge.addEventListener("click", async () => {
    await Notification.requestPermission();
    nudge.hidden = Notification.permission !== "default";
  });
  view.replaceChildren(title("Needs you", nudge), box, list, h("h2", {}, "Answered recently"), recent, pushPanel());
  const gen = routeGen;
  const paint = async () => {
    try {
      const all = (await api("api/approvals")).approvals;
      if (gen !== routeGen) return;
      const waiting = all.filter((a) => a.status === "pending");
      list.replaceChildren(...(waiting.length ? waiting.map((a) => approvalCard(a, { canAnswer: can("approve"), link: true })) : [h("p", { class: "empty" }, "Nothing is waiting for you.")]));
      const done = all.filter((a) => a.status !== "pending").slice(-10).reverse();
      recent.replaceChildren(...done.map((a) => approvalCard(a, { link: true })));
    } catch (e) {
      fail(box, e);
    }
  };
  await paint();
  let last = null;
  const off = onPending((pending) => {
    const ids = pending.map((a) => a.id).join();
    if (last !== null && ids !== last) paint();
    last = ids;
  });
  cleanup = off;
}

// -- new session ------------------------------------------------------------------------------

async function newView(query) {
  setNav("new");
  const gen = routeGen;
  await healthReady; // to mark the agents this arpc did not find
  if (gen !== routeGen) return;
  const box = errorBox("new-error");
  const executor = h(
    "select",
    { id: "executor", name: "executor" },
    (health ? Object.keys(health.executors) : EXECUTORS).map((name) => {
      const info = health && health.executors[name];
      const missing = info && !info.found ? ` (not found: set ${info.flag})` : "";
      return h("option", { value: name }, name + missing);
    }),
  );
  const model = h("input", { id: "model", name: "model", list: "models", placeholder: "default", autocomplete: "off", autocapitalize: "off" });
  const project = h("input", {
    id: "project",
    name: "project",
    list: "known-projects",
    placeholder: "/home/you/code/app",
    autocomplete: "off",
    autocapitalize: "off",
    spellcheck: "false",
  });
  project.value = query.get("project") || localStorage.getItem("arp.project") || "";
  const projects = h("datalist", { id: "known-projects" });
  const mode = h("select", { id: "mode", name: "permissionMode" }, h("option", { value: "" }, "arpc default"), MODES.map((m) => h("option", { value: m }, m)));
  const prompt = h("textarea", { id: "prompt", name: "prompt", rows: 6, placeholder: "What should the agent do?" });
  const submit = h("button", { class: "primary", type: "submit", id: "start" }, "Start session");
  const field = (label, input, hint) => h("label", { class: "field" }, h("span", {}, label), input, hint ? h("small", { class: "muted" }, hint) : null);
  const form = h(
    "form",
    { class: "new-session", id: "new-session" },
    field("Prompt", prompt),
    field("Project directory", project, "pick a known project or type an absolute path under arpc's --project-root"),
    h("div", { class: "row-actions" }, submit),
    box,
    h("h2", { class: "form-sub" }, "Agent and options"),
    h("div", { class: "grid" }, field("Agent", executor), field("Model", model, "optional, e.g. sonnet"), field("Permission mode", mode)),
  );
  view.replaceChildren(title("New session"), form, projects, h("datalist", { id: "models" }, MODELS.map((m) => h("option", { value: m }))));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    submit.disabled = true;
    box.textContent = "";
    const body = { executor: executor.value, prompt: prompt.value, projectPath: project.value.trim() };
    if (model.value.trim()) body.model = model.value.trim();
    if (mode.value) body.permissionMode = mode.value;
    try {
      const s = await api("api/sessions", { method: "POST", body });
      localStorage.setItem("arp.project", body.projectPath);
      location.hash = `#/session/${encodeURIComponent(s.id)}`;
    } catch (e) {
      fail(box, e);
    } finally {
      submit.disabled = false;
    }
  });
  prompt.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) form.requestSubmit();
  });
  // known projects: Claude history plus the directories of earlier ARP sessions
  const known = new Set();
  const [claude, mine] = await Promise.allSettled([api("api/claude/projects"), api("api/sessions?limit=100")]);
  if (claude.status === "fulfilled") claude.value.projects.forEach((p) => known.add(p.path));
  if (mine.status === "fulfilled") mine.value.sessions.forEach((s) => known.add(s.projectPath));
  projects.replaceChildren(...[...known].map((p) => h("option", { value: p })));
  const failed = [claude, mine].find((r) => r.status === "rejected");
  if (failed && !box.textContent) box.textContent = `Could not load the known projects. ${failed.reason.message}`;
  // offer the first known project, but never under the user's caret: a user (or a test's fill)
  // already in the empty field would get it in front of what they type next
  if (!project.value && known.size && document.activeElement !== project) project.value = [...known][0];
}

// -- access -----------------------------------------------------------------------------------

function tokenFrom(text) {
  const t = text.trim();
  const m = t.match(/(?:^|[?&#])access=([^&#\s]+)/);
  if (m) return decodeURIComponent(m[1]);
  return /^arpa_[0-9a-f]{12}_[A-Za-z0-9_-]{43}$/.test(t) ? t : null;
}

function signinView(reason) {
  setNav("");
  document.getElementById("health").textContent = "no access";
  showBanner("");
  const input = h("input", {
    id: "access-input",
    placeholder: "a link with access=… or a token arpa_…",
    autocomplete: "off",
    autocapitalize: "off",
    spellcheck: "false",
  });
  const box = errorBox("signin-error");
  const form = h(
    "form",
    { class: "signin", id: "signin" },
    h("label", { class: "field" }, h("span", {}, "Access link or token"), input),
    h("div", { class: "row-actions" }, h("button", { class: "primary", type: "submit" }, "Open the console")),
    box,
  );
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const token = tokenFrom(input.value);
    if (!token) {
      box.textContent = "That is neither a link with access=… nor an access token (arpa_…).";
      return;
    }
    location.assign(`${location.pathname}?access=${encodeURIComponent(token)}`); // arpc trades it for a cookie
  });
  view.replaceChildren(
    title("Access needed"),
    h("p", { class: "signin-reason", id: "signin-reason", "data-reason": reason }, REASONS[reason] || REASONS.missing),
    form,
  );
}

function deviceRow(t, refresh, box) {
  const bits = [`created ${new Date(t.createdAt).toLocaleDateString()}`];
  const used = t.lastUsedAt ? h("span", {}, "last used ", timeEl(t.lastUsedAt), t.lastUsedFrom ? ` from ${t.lastUsedFrom}` : "") : "never used";
  const expires = t.expiresAt ? h("span", {}, t.status === "expired" ? "expired " : "expires ", timeEl(t.expiresAt)) : t.status === "active" ? "never expires" : null;
  const actions = h("div", { class: "meta" });
  const rowError = h("div", { class: "error", role: "alert" });
  if (t.status === "active") {
    const revoke = h("button", { class: "danger subtle", type: "button", "data-revoke": t.id }, t.current ? "Revoke (this device)" : "Revoke");
    revoke.addEventListener("click", async () => {
      const warn = t.current ? " This is the device you are using: the console will stop working here." : "";
      if (!confirm(`Revoke "${t.name}"? Its link stops working at once and its open streams are closed.${warn}`)) return;
      revoke.disabled = true;
      try {
        await api(`api/tokens/${encodeURIComponent(t.id)}`, { method: "DELETE" });
        await refresh();
      } catch (e) {
        revoke.disabled = false;
        fail(rowError, e); // in the row whose button was tapped
      }
    });
    actions.append(revoke);
  } else {
    actions.append(pill(t.status));
  }
  return h(
    "div",
    { class: `row device status-row-${t.status}`, "data-token": t.id, "data-status": t.status },
    h(
      "div",
      { class: "main" },
      h("div", { class: "name" }, t.name, t.owner ? h("span", { class: "badge" }, "owner") : null, t.current ? h("span", { class: "badge here" }, "this device") : null),
      h("div", { class: "scopes" }, t.scopes.map((s) => h("span", { class: "scope", "data-scope": s }, s))),
      h("div", { class: "sub" }, bits.join(" · "), " · ", used, expires ? " · " : "", expires || ""),
      rowError,
    ),
    actions,
  );
}

async function devicesView() {
  setNav("devices");
  const box = errorBox("devices-error");
  const list = h("div", { class: "list", id: "devices" }, loading());
  const name = h("input", { id: "device-name", name: "name", maxlength: 64, placeholder: "e.g. Phone, Alice's laptop", autocomplete: "off" });
  const scopes = h(
    "fieldset",
    { class: "scopes-choice", id: "device-scopes" },
    h("legend", {}, "May"),
    SCOPES.map(([s, help]) =>
      h("label", { class: "check" }, h("input", { type: "checkbox", value: s, checked: s !== "admin" }), h("b", {}, s), " ", h("small", { class: "muted" }, help)),
    ),
  );
  const expiry = h("select", { id: "device-expiry", name: "expiresIn" }, EXPIRIES.map(([label, secs]) => h("option", { value: secs, selected: secs === 7 * 86400 }, label)));
  const submit = h("button", { class: "primary", type: "submit", id: "create-link" }, "Create link");
  const formError = errorBox("device-error");
  const made = h("div", { id: "new-link" });
  const form = h(
    "form",
    { class: "device-form", id: "device-form" },
    h("div", { class: "grid" }, h("label", { class: "field" }, h("span", {}, "Name"), name), h("label", { class: "field" }, h("span", {}, "Expires after"), expiry)),
    scopes,
    h("div", { class: "row-actions" }, submit),
    formError,
  );
  view.replaceChildren(
    title("Devices", h("span", { class: "muted" }, "who can reach this agent")),
    pushPanel(),
    h("h2", {}, "Share a link"),
    form,
    made,
    h("h2", {}, "Access tokens"),
    box,
    list,
  );
  const refresh = async () => {
    try {
      const data = await api("api/tokens");
      box.textContent = "";
      const active = data.tokens.filter((t) => t.status === "active");
      const ended = data.tokens.filter((t) => t.status !== "active");
      list.replaceChildren(...[...active, ...ended].map((t) => deviceRow(t, refresh, box)));
    } catch (e) {
      list.replaceChildren();
      fail(box, e);
    }
  };
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    formError.textContent = "";
    const chosen = [...scopes.querySelectorAll("input:checked")].map((i) => i.value);
    const body = { name: name.value.trim(), scopes: chosen };
    if (expiry.value) body.expiresIn = Number(expiry.value);
    submit.disabled = true;
    try {
      const t = await api("api/tokens", { method: "POST", body });
      const link = h("input", { id: "link-text", readonly: true, value: t.link });
      const copy = h("button", { type: "button", id: "copy-link" }, "Copy");
      copy.addEventListener("click", async () => {
        link.select();
        try {
          await navigator.clipboard.writeText(t.link);
          copy.textContent = "Copied";
        } catch (e) {
          copy.textContent = "Select and copy";
        }
      });
      made.replaceChildren(
        h(
          "div",
          { class: "made", "data-token": t.id },
          h("img", { id: "link-qr", src: t.qr, alt: `QR code of the link for ${t.name}`, width: 240, height: 240 }),
          h(
            "div",
            { class: "made-text" },
            h("p", {}, h("b", {}, t.name), ` may ${t.scopes.join(", ")}`, t.expiresAt ? h("span", {}, " until ", timeEl(t.expiresAt)) : " with no expiry", "."),
            h("p", { class: "muted" }, "Scan the code with the phone's camera, or copy the link. It is shown only this once: whoever has it gets this access."),
            h("div", { class: "copy-row" }, link, copy),
          ),
        ),
      );
      form.reset();
      await refresh();
      made.scrollIntoView({ block: "start" }); // the new link's QR, above the fold
    } catch (e) {
      fail(formError, e);
    } finally {
      submit.disabled = false;
    }
  });
  await refresh();
}

// -- routing ----------------------------------------------------------------------------------

async function route() {
  if (cleanup) cleanup();
  cleanup = null;
  routeGen += 1;
  window.scrollTo(0, 0);
  const hash = location.hash.replace(/^#\/?/, "");
  const [path, search] = hash.split("?");
  const parts = path.split("/");
  const arg = parts.slice(1).join("/");
  if (parts[0] === "signin") {
    signinView(decodeURIComponent(arg || signedOut || "missing"));
    return;
  }
  healthReady = loadHealth();
  try {
    if (parts[0] === "project" && arg) await projectView(decodeURIComponent(arg));
    else if (parts[0] === "devices") await devicesView();
    else if (parts[0] === "approvals") await approvalsView();
    else if (parts[0] === "history" && parts.length === 3 && parts[1] === "codex") await historyView(decodeURIComponent(parts[2]), "Codex");
    else if (parts[0] === "history" && parts.length === 3 && parts[1] === "gemini") await historyView(decodeURIComponent(parts[2]), "Gemini");
    else if (parts[0] === "history" && arg) await historyView(decodeURIComponent(arg));
    else if (parts[0] === "changes" && arg) await changesPage(decodeURIComponent(arg));
    else if (parts[0] === "sessions") await sessionsView();
    else if (parts[0] === "session" && arg) await sessionView(decodeURIComponent(arg));
    else if (parts[0] === "new") await newView(new URLSearchParams(search || ""));
    else await projectsView();
  } catch (e) {
    showBanner(`Something went wrong: ${e.message}`);
  }
}

window.addEventListener("hashchange", route);
registerWorker(); // on every page load; notification permission waits for the Notifications button
setInterval(loadHealth, 15000);
if (location.hash.startsWith("#/signin")) route();
else
  loadMe().then(() => {
    if (!signedOut && can("view")) watchPending();
    return route();
  });
