// Turning history messages and live session events into DOM. Text from the server is only
// ever set with textContent, or passed through the escaping markdown renderer.

import { markdown } from "./markdown.js";
import { approvalCard, updateCards } from "./approvals.js";

/** h("div", {class: "x", onclick: f}, child, "text", ...) */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "html") el.innerHTML = value; // only ever markdown() output
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function when(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  if (isNaN(d)) return String(iso);
  const today = new Date();
  const sameDay = d.toDateString() === today.toDateString();
  return sameDay
    ? d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" })
    : d.toLocaleString([], { year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
}

export function timeEl(iso) {
  return iso ? h("time", { datetime: iso, title: iso }, when(iso)) : null;
}

export function pill(status) {
  return h("span", { class: `pill status-${status}`, "data-status": status }, status);
}

function pretty(value) {
  if (typeof value === "string") return value;
  try {
    return JSON.stringify(value, null, 2);
  } catch (e) {
    return String(value);
  }
}

function clip(text, n = 80) {
  const s = String(text ?? "").replace(/\s+/g, " ").trim();
  return s.length > n ? s.slice(0, n - 1) + "…" : s;
}

/** A chat bubble with markdown text. */
export function bubble(role, text, time, extra = {}) {
  const label = { user: "You", assistant: "Assistant" }[role] || role;
  return h(
    "article",
    { class: `msg ${role}`, ...extra },
    h("header", {}, h("span", { class: "role" }, label), timeEl(time)),
    h("div", { class: "md", html: markdown(text) }),
  );
}

export function thinking(text, time) {
  return h("details", { class: "fold thinking" }, h("summary", {}, "Thinking ", timeEl(time)), h("div", { class: "md", html: markdown(text) }));
}

function toolSummary(name, input) {
  if (input && typeof input === "object") {
    const key = ["command", "file_path", "path", "pattern", "url", "query", "description"].find(
      (k) => typeof input[k] === "string",
    );
    if (key) return `${name}: ${clip(input[key])}`;
    if (Array.isArray(input.command)) return `${name}: ${clip(input.command.join(" "))}`; // Codex history
  }
  return String(name || "tool");
}

export function toolCall(name, input, time) {
  return h(
    "details",
    { class: "fold tool-call" },
    h("summary", {}, h("span", { class: "tag" }, "Tool call"), " ", toolSummary(name, input), " ", timeEl(time)),
    h("pre", {}, pretty(input)),
  );
}

export function toolResult(content, isError, time, label = "Tool result") {
  const text = pretty(content);
  return h(
    "details",
    { class: `fold tool-result${isError ? " error" : ""}` },
    h("summary", {}, h("span", { class: "tag" }, isError ? `${label} (error)` : label), " ", clip(text, 60), " ", timeEl(time)),
    h("pre", {}, text),
  );
}

export function note(text, cls = "") {
  return h("div", { class: `note ${cls}` }, text);
}

function rawFold(label, data) {
  return h("details", { class: "fold raw" }, h("summary", {}, label), h("pre", {}, pretty(data)));
}

/** One Claude history message (from /api/claude/sessions/{id}). */
export function historyMessage(m) {
  const nodes = [];
  if (m.thinking) nodes.push(thinking(m.thinking, m.timestamp));
  if (m.text) nodes.push(bubble(m.role, m.text, m.timestamp));
  for (const call of m.toolCalls || []) nodes.push(toolCall(call.name, call.input, m.timestamp));
  for (const result of m.toolResults || []) nodes.push(toolResult(result.content, result.isError, m.timestamp));
  return nodes;
}

// -- live session events -----------------------------------------------------------------

/** Renders a session's events into a container, keeping a little state (Gemini deltas, stderr runs). */
export class Transcript {
  constructor(container, executor, { canAnswer = true } = {}) {
    this.el = container;
    this.executor = executor;
    this.canAnswer = canAnswer;
    this.delta = null; // the Gemini assistant bubble being extended
    this.live = null; // Claude's assistant bubble growing with text deltas
    this.stderr = null; // the <pre> of the current run of stderr events
  }

  add(event) {
    const nodes = this.render(event) || [];
    const list = Array.isArray(nodes) ? nodes : [nodes];
    for (const node of list) {
      if (!node) continue;
      node.dataset.seq = event.seq;
      this.el.append(node);
    }
    if (event.kind !== "stderr") this.stderr = null;
  }

  render(e) {
    switch (e.kind) {
      case "turn":
        this.delta = this.live = null;
        return bubble("user", e.prompt, e.time, { "data-turn": e.turn });
      case "agent":
        return this.agent(e.data, e.time);
      case "raw":
        return h("pre", { class: "raw-line" }, e.text);
      case "approval":
        this.delta = this.live = null;
        return approvalCard(e.approval, { canAnswer: this.canAnswer });
      case "approval_resolved":
        updateCards(e.approval);
        return null;
      case "stderr":
        if (this.stderr) {
          this.stderr.textContent += e.text;
          return null;
        }
        this.stderr = h("pre", {}, e.text);
        return h("details", { class: "fold stderr" }, h("summary", {}, h("span", { class: "tag" }, "stderr"), " ", timeEl(e.time)), this.stderr);
      case "status": {
        this.delta = this.live = null;
        const bits = [pill(e.status)];
        if (e.exitCode !== null && e.exitCode !== undefined) bits.push(` exit code ${e.exitCode}`);
        if (e.error) bits.push(` — ${e.error}`);
        return h("div", { class: "note end", "data-status": e.status }, "Run ended: ", ...bits, " ", timeEl(e.time));
      }
      default:
        return rawFold(`event ${e.kind}`, e);
    }
  }

  agent(d, time) {
    if (!d || typeof d !== "object") return rawFold("output", d);
    if (typeof d.method === "string" && this.executor !== "Codex") return this.acp(d, time);
    const fn = { Claude: this.claude, Codex: this.codex, Gemini: this.gemini }[this.executor] || this.acp;
    const nodes = fn ? fn.call(this, d, time) : undefined;
    return nodes === undefined ? rawFold(`event ${d.type ?? "?"}`, d) : nodes;
  }

  claude(d, time) {
    if (d.type === "stream_event") return this.claudeDelta(d, time);
    if (d.type === "system") {
      if (d.subtype === "init") return note(`Claude Code ${d.claude_code_version || ""} started · model ${d.model || "?"} · ${d.permissionMode || ""}`.trim(), "meta");
      return rawFold(`system ${d.subtype || ""}`, d);
    }
    if (d.type === "assistant" || d.type === "user") {
      const content = d.message && d.message.content;
      if (typeof content === "string") return d.type === "assistant" ? bubble("assistant", content, time) : null;
      if (!Array.isArray(content)) return undefined;
      const nodes = [];
      for (const block of content) {
        if (block.type === "text" && d.type === "assistant" && this.live && !d.parent_tool_use_id) {
          // the whole message after its deltas: the live bubble becomes it, nothing is shown twice
          this.live.md.innerHTML = markdown(block.text);
          this.live.node.classList.remove("streaming");
          this.live = null;
        } else if (block.type === "text" && d.type === "assistant") nodes.push(bubble("assistant", block.text, time));
        else if (block.type === "thinking") nodes.push(thinking(block.thinking, time));
        else if (block.type === "tool_use" || block.type === "server_tool_use") nodes.push(toolCall(block.name, block.input, time));
        else if (block.type === "tool_result") {
          const c = block.content;
          const text = Array.isArray(c) ? c.map((x) => (x && x.text) || "").join("\n") : c;
          nodes.push(toolResult(text, block.is_error, time));
        }
      }
      return nodes;
    }
    if (d.type === "result") {
      const cost = typeof d.total_cost_usd === "number" ? ` · $${d.total_cost_usd.toFixed(4)}` : "";
      const turns = d.num_turns ? ` · ${d.num_turns} turns` : "";
      const ms = typeof d.duration_ms === "number" ? ` · ${(d.duration_ms / 1000).toFixed(1)} s` : "";
      return note(`Result: ${d.subtype || "?"}${turns}${ms}${cost}`, d.is_error ? "meta error" : "meta");
    }
    return undefined;
  }

  /** Claude's ``--include-partial-messages`` text deltas: one live bubble that grows as the model
   * writes, replaced by the whole message when it arrives; other stream events show nothing. */
  claudeDelta(d, time) {
    const ev = d.event || {};
    if (d.parent_tool_use_id) return null; // a subagent's stream: its messages show as they end
    if (ev.type === "message_start") this.live = null;
    if (ev.type !== "content_block_delta" || !ev.delta || ev.delta.type !== "text_delta") return null;
    if (this.live) {
      this.live.text += ev.delta.text;
      this.live.md.innerHTML = markdown(this.live.text);
      return null;
    }
    const node = bubble("assistant", ev.delta.text, time);
    node.classList.add("streaming");
    this.live = { text: ev.delta.text, md: node.querySelector(".md"), node };
    return node;
  }

  codex(d, time) {
    if (typeof d.method === "string") return this.codexApp(d, time);
    if (d.type === "thread.started") return note(`Codex thread ${d.thread_id}`, "meta");
    if (d.type === "turn.started" || d.type === "item.started" || d.type === "item.updated") return null;
    if (d.type === "turn.completed") return note(`Turn completed${d.usage ? ` · ${d.usage.output_tokens ?? "?"} output tokens` : ""}`, "meta");
    if (d.type === "turn.failed") return note(`Turn failed: ${(d.error && d.error.message) || "unknown error"}`, "error");
    if (d.type === "error") return note(`Error: ${d.message}`, "error");
    if (d.type === "item.completed" && d.item) {
      const item = d.item;
      if (item.type === "agent_message" || item.type === "assistant_message") return bubble("assistant", item.text, time);
      if (item.type === "reasoning") return thinking(item.text, time);
      if (item.type === "command_execution") {
        return [toolCall("shell", { command: item.command }, time), toolResult(item.aggregated_output ?? "", item.exit_code ? true : false, time, `exit ${item.exit_code ?? "?"}`)];
      }
      if (item.type === "file_change") return toolCall("file change", item.changes || item, time);
      if (item.type === "mcp_tool_call") return toolCall(`${item.server || "mcp"}.${item.tool || "?"}`, item.arguments || item, time);
      return rawFold(`item ${item.type}`, item);
    }
    return undefined;
  }

  // codex app-server notifications (reference/approvals.md §2)
  codexApp(d, time) {
    const p = d.params || {};
    const item = p.item || {};
    if (d.method === "thread/started") return note(`Codex thread ${(p.thread && p.thread.id) || "?"}`, "meta");
    if (d.method === "turn/completed") {
      const t = p.turn || {};
      if (t.status === "failed") return note(`Turn failed: ${(t.error && t.error.message) || "unknown error"}`, "error");
      return note("Turn completed", "meta");
    }
    if (d.method === "error") return note(`Error: ${(p.error && p.error.message) || "?"}`, "error");
    if (d.method !== "item/completed") return null;
    if (item.type === "agentMessage") return bubble("assistant", item.text, time);
    if (item.type === "reasoning") return thinking(item.text || (item.summary || []).join("\n"), time);
    if (item.type === "commandExecution") {
      const cmd = Array.isArray(item.command) ? item.command.join(" ") : item.command;
      const failed = item.status !== "completed" || (item.exitCode ?? 0) !== 0;
      return [toolCall("shell", { command: cmd }, time), toolResult(item.aggregatedOutput ?? "", failed, time, item.status === "declined" ? "declined" : `exit ${item.exitCode ?? "?"}`)];
    }
    if (item.type === "fileChange") return toolCall("file change", item.changes || item, time);
    if (item.type === "userMessage") return null;
    return rawFold(`item ${item.type}`, item);
  }

  // Agent Client Protocol session/update notifications (Gemini --experimental-acp, --acp-agent)
  acp(d, time) {
    const u = (d.params && d.params.update) || {};
    const c = u.content || {};
    if (d.method !== "session/update") return null;
    if (u.sessionUpdate === "agent_message_chunk" && c.type === "text") {
      if (this.delta) {
        this.delta.text += c.text;
        this.delta.md.innerHTML = markdown(this.delta.text);
        return null;
      }
      const node = bubble("assistant", c.text, time);
      this.delta = { text: c.text, md: node.querySelector(".md") };
      return node;
    }
    this.delta = null;
    if (u.sessionUpdate === "agent_thought_chunk" && c.type === "text") return thinking(c.text, time);
    if (u.sessionUpdate === "tool_call") return toolCall(u.title || u.kind || "tool", u.rawInput || u.content || {}, time);
    if (u.sessionUpdate === "tool_call_update" && (u.status === "completed" || u.status === "failed")) {
      const text = (u.content || []).map((b) => (b && b.content && b.content.text) || (b && b.type === "diff" ? `diff ${b.path}` : "")).join("\n");
      return toolResult(text, u.status === "failed", time);
    }
    return null;
  }

  gemini(d, time) {
    if (d.type === "init") return note(`Gemini session · model ${d.model || "?"}`, "meta");
    if (d.type === "message") {
      if (d.role === "user") return null; // the turn already shows the prompt
      if (d.role === "assistant" && typeof d.content === "string") {
        if (d.delta && this.delta) {
          this.delta.text += d.content;
          this.delta.md.innerHTML = markdown(this.delta.text);
          return null;
        }
        const node = bubble("assistant", d.content, time);
        this.delta = d.delta ? { text: d.content, md: node.querySelector(".md") } : null;
        return node;
      }
    }
    this.delta = null;
    if (d.type === "tool_use") return toolCall(d.tool_name, d.parameters, time);
    if (d.type === "tool_result") return toolResult(d.output ?? d.error ?? "", d.status && d.status !== "success", time);
    if (d.type === "result") return note(`Result: ${d.status || "?"}`, d.status === "success" ? "meta" : "meta error");
    if (d.type === "error") return note(`${d.severity || "error"}: ${d.message}`, "error");
    return undefined;
  }
}
