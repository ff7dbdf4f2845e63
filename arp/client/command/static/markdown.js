// A small, safe markdown renderer: every piece of source text is HTML-escaped before any tag
// is added, links are kept only for http(s) and mailto URLs, and no raw HTML passes through.
// Covers what agents write: headings, paragraphs, fenced code, lists, quotes, rules, tables,
// `code`, **bold**, *italic*, ~~strike~~, [links](https://...) and bare URLs.

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

export function escapeHtml(text) {
  return String(text ?? "").replace(/[&<>"']/g, (c) => ESCAPES[c]);
}

function safeUrl(url) {
  const u = url.trim();
  return /^(https?:\/\/|mailto:)/i.test(u) ? u : null;
}

function link(url, labelHtml) {
  return `<a href="${escapeHtml(url)}" target="_blank" rel="noopener noreferrer">${labelHtml}</a>`;
}

// emphasis on already-escaped text: only wraps it in tags, never adds attributes
function emphasis(s) {
  return s
    .replace(/\*\*(?=\S)([\s\S]*?\S)\*\*/g, "<strong>$1</strong>")
    .replace(/(^|[^\w])__(?=\S)([\s\S]*?\S)__(?!\w)/g, "$1<strong>$2</strong>")
    .replace(/(^|[^*\w])\*(?=[^\s*])([^*\n]*?[^\s*])?\*(?![*\w])/g, (m, pre, body) =>
      body === undefined ? m : `${pre}<em>${body}</em>`,
    )
    .replace(/(^|[^_\w])_(?=[^\s_])([^_\n]*?[^\s_])?_(?![_\w])/g, (m, pre, body) =>
      body === undefined ? m : `${pre}<em>${body}</em>`,
    )
    .replace(/~~(?=\S)([\s\S]*?\S)~~/g, "<del>$1</del>");
}

const LINK_RE = /\[([^\]\n]+)\]\(([^)\s]+)(?:\s+"[^"\n]*")?\)|(https?:\/\/[^\s<>()"']*[^\s<>()"'.,;:!?])/g;

function rich(text) {
  let out = "";
  let last = 0;
  LINK_RE.lastIndex = 0;
  let m;
  while ((m = LINK_RE.exec(text))) {
    out += emphasis(escapeHtml(text.slice(last, m.index)));
    if (m[1] !== undefined) {
      const url = safeUrl(m[2]);
      out += url ? link(url, emphasis(escapeHtml(m[1]))) : emphasis(escapeHtml(m[0]));
    } else {
      out += link(m[3], escapeHtml(m[3]));
    }
    last = LINK_RE.lastIndex;
  }
  return out + emphasis(escapeHtml(text.slice(last)));
}

/** Inline markdown of one paragraph (line breaks become <br>). */
export function inline(text) {
  const src = String(text ?? "");
  const re = /(`+)([\s\S]*?[^`])\1(?!`)/g;
  let out = "";
  let last = 0;
  let m;
  while ((m = re.exec(src))) {
    out += rich(src.slice(last, m.index));
    out += `<code>${escapeHtml(m[2].replace(/^ (.*) $/s, "$1"))}</code>`;
    last = re.lastIndex;
  }
  out += rich(src.slice(last));
  return out.replace(/\n/g, "<br>");
}

const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([\w+#.-]*)/;
const HEADING = /^ {0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$/;
const RULE = /^ {0,3}([-*_])(?:\s*\1){2,}\s*$/;
const QUOTE = /^ {0,3}> ?/;
const ITEM = /^( *)([-*+]|\d{1,9}[.)])\s+(.*)$/;
const TABLE_SEP = /^\s*\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*$/;

function startsBlock(line) {
  return FENCE.test(line) || HEADING.test(line) || RULE.test(line) || QUOTE.test(line) || ITEM.test(line);
}

function cells(line) {
  let s = line.trim();
  if (s.startsWith("|")) s = s.slice(1);
  if (s.endsWith("|") && !s.endsWith("\\|")) s = s.slice(0, -1);
  return s.split(/(?<!\\)\|/).map((c) => c.trim().replace(/\\\|/g, "|"));
}

function list(lines, i) {
  const first = ITEM.exec(lines[i]);
  const indent = first[1].length;
  const ordered = /\d/.test(first[2]);
  const start = ordered ? parseInt(first[2], 10) : 1;
  const items = [];
  let current = null;
  while (i < lines.length) {
    const line = lines[i];
    const m = ITEM.exec(line);
    if (m && m[1].length <= indent + 1 && /\d/.test(m[2]) === ordered) {
      current = [m[3]];
      items.push(current);
      i++;
      continue;
    }
    if (/^\s*$/.test(line)) {
      const next = lines[i + 1];
      if (next !== undefined && (/^\s{2,}\S/.test(next) || (ITEM.exec(next) && ITEM.exec(next)[1].length <= indent + 1))) {
        current.push("");
        i++;
        continue;
      }
      break;
    }
    if (line.length - line.trimStart().length > indent || !startsBlock(line)) {
      current.push(line.slice(Math.min(indent + 2, line.length - line.trimStart().length)));
      i++;
      continue;
    }
    break;
  }
  const tag = ordered ? "ol" : "ul";
  const attr = ordered && start !== 1 ? ` start="${start}"` : "";
  const body = items
    .map((item) => {
      let html = blocks(item);
      const single = /^<p>((?:(?!<p>)[\s\S])*)<\/p>$/.exec(html);
      if (single) html = single[1];
      else html = html.replace(/^<p>((?:(?!<p>)[\s\S])*?)<\/p>(?=<[uo]l)/, "$1");
      return `<li>${html}</li>`;
    })
    .join("");
  return [`<${tag}${attr}>${body}</${tag}>`, i];
}

function blocks(lines) {
  const out = [];
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    let m;
    if ((m = FENCE.exec(line))) {
      const fence = m[1];
      const body = [];
      i++;
      while (i < lines.length && !lines[i].trim().startsWith(fence)) body.push(lines[i++]);
      i++;
      const lang = m[2] ? ` data-lang="${escapeHtml(m[2])}"` : "";
      out.push(`<pre><code${lang}>${escapeHtml(body.join("\n"))}</code></pre>`);
    } else if (/^\s*$/.test(line)) {
      i++;
    } else if ((m = HEADING.exec(line))) {
      const n = m[1].length;
      out.push(`<h${n}>${inline(m[2])}</h${n}>`);
      i++;
    } else if (RULE.test(line)) {
      out.push("<hr>");
      i++;
    } else if (QUOTE.test(line)) {
      const body = [];
      while (i < lines.length && QUOTE.test(lines[i])) body.push(lines[i++].replace(QUOTE, ""));
      out.push(`<blockquote>${blocks(body)}</blockquote>`);
    } else if (ITEM.test(line)) {
      let html;
      [html, i] = list(lines, i);
      out.push(html);
    } else if (line.includes("|") && i + 1 < lines.length && TABLE_SEP.test(lines[i + 1]) && lines[i + 1].includes("-")) {
      const head = cells(line);
      i += 2;
      const rows = [];
      while (i < lines.length && lines[i].includes("|") && !/^\s*$/.test(lines[i])) rows.push(cells(lines[i++]));
      const th = head.map((c) => `<th>${inline(c)}</th>`).join("");
      const trs = rows.map((r) => `<tr>${head.map((_, k) => `<td>${inline(r[k] ?? "")}</td>`).join("")}</tr>`);
      out.push(`<div class="table"><table><thead><tr>${th}</tr></thead><tbody>${trs.join("")}</tbody></table></div>`);
    } else {
      const para = [line.trim()];
      i++;
      while (i < lines.length && !/^\s*$/.test(lines[i]) && !startsBlock(lines[i])) para.push(lines[i++].trim());
      out.push(`<p>${inline(para.join("\n"))}</p>`);
    }
  }
  return out.join("");
}

/** Markdown source to safe HTML. */
export function markdown(text) {
  return blocks(String(text ?? "").replace(/\r\n?/g, "\n").split("\n"));
}
