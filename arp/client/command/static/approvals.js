// Approval and question cards, the "needs you" badge and the browser notification nudge.
// A card is keyed by its approval id (data-approval): every open console shows the same record,
// and an approval_resolved event (or the badge's long poll) repaints it wherever it is.

import { api } from "./api.js";
import { h, timeEl } from "./render.js";

const VERB = { allowed: "Allowed", denied: "Denied", expired: "Expired (denied)", cancelled: "Cancelled" };

function who(record) {
  const by = record.answeredBy;
  if (!by) return "";
  if (by.name) return ` by ${by.name}`;
  if (by.rule) return ` — ${by.rule}`;
  return "";
}

/** A unified diff with added/removed lines coloured (text only, never HTML). */
export function diffView(text) {
  const pre = h("pre", { class: "diff" });
  for (const line of String(text || "").split("\n")) {
    let cls = "";
    if (line.startsWith("+++") || line.startsWith("---")) cls = "file";
    else if (line.startsWith("+")) cls = "add";
    else if (line.startsWith("-")) cls = "del";
    else if (line.startsWith("@@")) cls = "hunk";
    pre.append(h("span", { class: cls }, line + "\n"));
  }
  return pre;
}

function headline(record) {
  const agent = record.agent || "The agent";
  if (record.kind === "question") return [h("b", {}, agent), " asks you"];
  const s = record.summary || {};
  if (s.command) return [h("b", {}, agent), " wants to run a command"];
  if (s.diff || s.path) return [h("b", {}, agent), " wants to change ", h("code", {}, s.path || "a file")];
  return [h("b", {}, agent), " wants to use ", h("code", {}, record.tool)];
}

function summaryView(record) {
  const s = record.summary || {};
  const out = [];
  if (record.kind === "question") return out;
  if (s.title && !s.command && !s.diff) out.push(h("div", { class: "approval-title" }, s.title));
  if (s.description) out.push(h("div", { class: "muted" }, s.description));
  if (s.command) out.push(h("pre", { class: "cmd" }, s.command));
  if (s.cwd) out.push(h("div", { class: "cwd muted" }, "in ", h("code", {}, s.cwd)));
  if (s.diff) out.push(diffView(s.diff));
  else if (s.path && !s.command) out.push(h("div", { class: "cwd" }, h("code", {}, s.path)));
  if (s.reason || s.decision_reason) out.push(h("div", { class: "muted" }, s.reason || s.decision_reason));
  if (!out.length) {
    out.push(h("details", { class: "fold" }, h("summary", {}, "Input"), h("pre", {}, JSON.stringify(record.input, null, 2))));
  }
  return out;
}

function questionFields(record) {
  const fields = [];
  const read = [];
  (record.questions || []).forEach((q, i) => {
    const name = `q-${record.id}-${i}`;
    const type = q.multiSelect ? "checkbox" : "radio";
    const options = (q.options || []).map((o, j) =>
      h("label", { class: "option" }, h("input", { type, name, value: o.label, id: `${name}-${j}` }), " ", h("span", {}, o.label), o.description ? h("small", { class: "muted" }, ` — ${o.description}`) : null),
    );
    const other = h("input", { type: "text", class: "other", placeholder: "Or type an answer", "aria-label": `Other answer to ${q.question}` });
    fields.push(h("fieldset", { class: "question" }, h("legend", {}, q.header ? h("span", { class: "tag" }, q.header) : null, " ", q.question), ...options, other));
    read.push(() => {
      const picked = [...document.querySelectorAll(`input[name="${name}"]:checked`)].map((x) => x.value);
      const typed = other.value.trim();
      if (typed) return [q.question, q.multiSelect ? [...picked, typed] : typed];
      if (!picked.length) return null;
      return [q.question, q.multiSelect ? picked : picked[0]];
    });
  });
  return { fields, read };
}

/** The card for one approval record; ``canAnswer``: whether this device has the approve scope. */
export function approvalCard(record, { canAnswer = true, link = false } = {}) {
  const card = h("section", { class: "approval-card", "data-approval": record.id, "data-status": record.status, "data-kind": record.kind });
  paintCard(card, record, canAnswer, link);
  return card;
}

function paintCard(card, record, canAnswer, link) {
  card.dataset.status = record.status;
  const top = h("header", {}, h("span", { class: "tag needs" }, record.status === "pending" ? "Needs you" : VERB[record.status] || record.status), " ", ...headline(record), " ", timeEl(record.createdAt));
  const parts = [top, ...summaryView(record)];
  if (link) parts.push(h("a", { href: `#/session/${encodeURIComponent(record.sessionId)}`, class: "open-session" }, "Open the session →"));
  if (record.status !== "pending") {
    const said = record.decision && record.decision.message;
    const msg = said && !(record.answeredBy && record.answeredBy.rule === said) ? said : null; // said once
    parts.push(h("div", { class: "outcome" }, `${VERB[record.status] || record.status}${who(record)} `, timeEl(record.answeredAt), msg ? h("div", { class: "muted" }, `“${msg}”`) : null));
    card.replaceChildren(...parts);
    return;
  }
  parts.push(h("div", { class: "muted deadline" }, "Denied automatically at ", timeEl(record.deadline), " if nobody answers."));
  if (!canAnswer) {
    parts.push(h("div", { class: "note" }, "This device may not answer (it lacks the approve scope)."));
    card.replaceChildren(...parts);
    return;
  }
  const error = h("div", { class: "error", role: "alert" });
  const send = async (body, buttons) => {
    for (const b of buttons) b.disabled = true;
    error.textContent = "";
    try {
      const done = await api(`api/sessions/${encodeURIComponent(record.sessionId)}/approvals/${encodeURIComponent(record.id)}`, { method: "POST", body });
      updateCards(done);
    } catch (e) {
      for (const b of buttons) b.disabled = false;
      error.textContent = e.message;
      if (e.status === 409) refreshBadge();
    }
  };
  const denyMessage = h("input", { type: "text", class: "deny-message", placeholder: "Tell the agent why (optional)", "aria-label": "Why you deny" });
  const denyForm = h("form", { class: "deny-form", hidden: true }, denyMessage, h("button", { type: "submit", class: "danger confirm-deny" }, "Deny"));
  const deny = h("button", { type: "button", class: "danger subtle deny" }, record.kind === "question" ? "Skip" : "Deny…");
  deny.addEventListener("click", () => {
    denyForm.hidden = false;
    denyMessage.focus();
  });
  let buttons = [deny];
  if (record.kind === "question") {
    const { fields, read } = questionFields(record);
    const submit = h("button", { type: "submit", class: "primary answer" }, "Answer");
    const form = h("form", { class: "question-form" }, ...fields, h("div", { class: "approval-actions" }, submit, deny));
    buttons = [submit, deny];
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const pairs = read.map((f) => f()).filter(Boolean);
      if (!pairs.length) {
        error.textContent = "Pick or type an answer first.";
        return;
      }
      send({ decision: "allow", answers: Object.fromEntries(pairs) }, buttons);
    });
    parts.push(form);
  } else {
    const allow = h("button", { type: "button", class: "primary allow" }, "Allow");
    const always = record.sessionScope ? h("button", { type: "button", class: "allow-session" }, "Allow for this session") : null;
    buttons = [allow, deny, always].filter(Boolean);
    allow.addEventListener("click", () => send({ decision: "allow" }, buttons));
    if (always) always.addEventListener("click", () => send({ decision: "allow", scope: "session" }, buttons));
    if (always && typeof record.sessionScope === "string") parts.push(h("p", { class: "session-scope" }, "For this session: " + record.sessionScope));
    parts.push(h("div", { class: "approval-actions" }, allow, always, deny));
  }
  denyForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const body = { decision: "deny" };
    if (denyMessage.value.trim()) body.message = denyMessage.value.trim();
    send(body, buttons);
  });
  parts.push(denyForm, error);
  card.replaceChildren(...parts);
  card.canAnswer = canAnswer;
  card.link = link;
}

/** Repaint every card of this record on the page (answered here, elsewhere, or expired). */
export function updateCards(record) {
  for (const card of document.querySelectorAll(`[data-approval="${CSS.escape(record.id)}"]`)) {
    if (card.dataset.status === record.status) continue;
    paintCard(card, record, card.canAnswer !== false, !!card.link);
  }
  refreshBadge();
}

// -- the "needs you" badge: a long poll on GET /api/approvals ----------------------------------

let version = -1;
let pending = [];
let seen = null; // ids already notified about
let running = false;
let kick = null;
const listeners = new Set();

/** Call ``fn(pending)`` whenever the pending list changes. */
export function onPending(fn) {
  listeners.add(fn);
  fn(pending);
  return () => listeners.delete(fn);
}

export function pendingNow() {
  return pending;
}

function paintBadge() {
  const badge = document.getElementById("needs-you");
  if (!badge) return;
  badge.hidden = pending.length === 0;
  badge.querySelector("b").textContent = String(pending.length);
  badge.title = pending.length ? `${pending.length} waiting for your answer` : "";
}

/** Ask again now (after an answer, or a 409). */
export function refreshBadge() {
  version = -1;
  if (kick) kick();
}

function nudge(records) {
  if (seen === null) {
    seen = new Set(records.map((r) => r.id)); // the first load does not notify
    return;
  }
  for (const r of records) {
    if (seen.has(r.id)) continue;
    seen.add(r.id);
    const s = r.summary || {};
    notify(r.kind === "question" ? `${r.agent} asks you` : `${r.agent} needs approval`, s.command || s.path || s.title || r.tool, `#/session/${r.sessionId}`, r.id);
  }
}

/** A browser notification while the console is in the background (if the user allowed them). */
export function notify(title, body, hash, tag) {
  if (!document.hidden || typeof Notification === "undefined" || Notification.permission !== "granted") return;
  if (localStorage.getItem("arp-push-subscription")) return; // Web Push on: sw.js notifies (push.js)
  try {
    const n = new Notification(title, { body: String(body || "").slice(0, 200), tag: tag || undefined });
    n.onclick = () => {
      window.focus();
      location.hash = hash;
      n.close();
    };
  } catch (e) {
    /* some mobile browsers only notify from a service worker */
  }
}

/** Start the long poll (once per page). */
export function watchPending() {
  if (running) return;
  running = true;
  const loop = async () => {
    for (;;) {
      try {
        const wait = version < 0 ? 0 : 50;
        const body = await api(`api/approvals?status=pending&wait=${wait}&version=${version}`);
        version = body.version;
        pending = body.approvals;
        nudge(pending);
        paintBadge();
        for (const fn of listeners) fn(pending);
      } catch (e) {
        if (e.status === 401 || e.status === 403) {
          running = false;
          return;
        }
        await new Promise((resolve) => {
          kick = resolve;
          setTimeout(resolve, 5000);
        });
      }
    }
  };
  loop();
}
