// What a session changed (GET /api/sessions/{id}/changes), readable on a phone: one fold per
// file, each diff line with its old and new line numbers, wrapped, added and removed lines
// coloured, and the unchanged regions between hunks collapsed to a "N unchanged lines" row.
// Text from the server is only ever set with textContent.

import { h } from "./render.js";

const HUNK = /^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@(.*)$/;
const STATUS_WORD = { added: "added", modified: "modified", deleted: "deleted", renamed: "renamed" };

function skipRow(n, where) {
  const text = n > 0 ? `⋯ ${n} unchanged line${n === 1 ? "" : "s"}${where}` : `⋯${where}`;
  return h("div", { class: "dl skip", role: "separator" }, h("span", { class: "ln" }, ""), h("span", { class: "ln" }, ""), h("span", { class: "tx" }, text));
}

/** The rows of one file's unified diff (headers before the first @@ are left out). */
export function diffRows(text) {
  const rows = [];
  let oldNo = 0;
  let newNo = 0;
  let seenHunk = false;
  let lastOld = 0; // the last old line shown, to count what a gap between hunks hides
  for (const line of String(text || "").split("\n")) {
    const m = line.match(HUNK);
    if (m) {
      const start = Number(m[1]);
      const gap = start - (seenHunk ? lastOld + 1 : 1);
      if (gap > 0 || (!seenHunk && start > 1)) rows.push(skipRow(gap, seenHunk ? "" : " above"));
      oldNo = start;
      newNo = Number(m[3]);
      if (start === 0) oldNo = 1; // a new file: "-0,0"
      seenHunk = true;
      continue;
    }
    if (!seenHunk || line === "") continue;
    const sign = line[0];
    const body = line.slice(1);
    if (sign === "+") {
      rows.push(h("div", { class: "dl add" }, h("span", { class: "ln" }, ""), h("span", { class: "ln" }, String(newNo)), h("span", { class: "tx" }, body || " ")));
      newNo += 1;
    } else if (sign === "-") {
      rows.push(h("div", { class: "dl del" }, h("span", { class: "ln" }, String(oldNo)), h("span", { class: "ln" }, ""), h("span", { class: "tx" }, body || " ")));
      lastOld = oldNo;
      oldNo += 1;
    } else if (sign === " ") {
      rows.push(h("div", { class: "dl ctx" }, h("span", { class: "ln" }, String(oldNo)), h("span", { class: "ln" }, String(newNo)), h("span", { class: "tx" }, body || " ")));
      lastOld = oldNo;
      oldNo += 1;
      newNo += 1;
    } else if (sign === "\\") {
      rows.push(h("div", { class: "dl note" }, h("span", { class: "ln" }, ""), h("span", { class: "ln" }, ""), h("span", { class: "tx" }, body.trim())));
    }
  }
  return rows;
}

function counts(f) {
  const bits = [];
  if (typeof f.added === "number") bits.push(h("span", { class: "plus" }, `+${f.added}`));
  if (typeof f.removed === "number") bits.push(h("span", { class: "minus" }, `−${f.removed}`));
  return h("span", { class: "counts" }, ...bits);
}

/** One file: a fold with its status, path and counts; open if ``open``. */
export function fileDiff(f, open) {
  const name = f.oldPath ? `${f.oldPath} → ${f.path}` : f.path;
  const summary = h(
    "summary",
    {},
    h("span", { class: `fstatus fstatus-${f.status}` }, STATUS_WORD[f.status] || f.status),
    h("span", { class: "fpath" }, name),
    counts(f),
  );
  const body = [];
  if (f.diff) body.push(h("div", { class: "diff-lines" }, diffRows(f.diff)));
  if (f.summary) body.push(h("p", { class: "muted file-summary" }, f.summary));
  if (!f.diff && !f.summary) body.push(h("p", { class: "muted file-summary" }, "No line changes to show."));
  return h("details", { class: "file-diff", "data-path": f.path, "data-status": f.status, open: open || undefined }, summary, ...body);
}

/** The whole answer: a one-line total, then every file (the first few open). */
export function changesView(data) {
  const files = data.files || [];
  const added = files.reduce((n, f) => n + (f.added || 0), 0);
  const removed = files.reduce((n, f) => n + (f.removed || 0), 0);
  const source = data.source === "git" ? "the project's git working tree" : "the agent's own edit and write calls";
  const total = h(
    "p",
    { class: "changes-total", id: "changes-total" },
    files.length ? `${files.length} file${files.length === 1 ? "" : "s"} changed · ` : "No changed files · ",
    h("span", { class: "plus" }, `+${added}`),
    " ",
    h("span", { class: "minus" }, `−${removed}`),
    h("small", { class: "muted" }, ` · from ${source}`),
  );
  const small = files.length <= 4;
  const nodes = [total, ...files.map((f, i) => fileDiff(f, small || i < 2))];
  if (data.truncated) nodes.push(h("p", { class: "note", id: "changes-truncated" }, "Not everything is shown: there were too many files or too long a diff."));
  return nodes;
}
