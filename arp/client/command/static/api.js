// Calls to the command-mode API. URLs are relative: the console is served at "/" and the relay
// routes these requests to this arpc. arpc itself checks access: the page was opened with
// ?access=<token>, which arpc traded for an HttpOnly cookie that these same-origin calls carry.

export class ApiError extends Error {
  constructor(status, message, fromRelay = false) {
    super(message);
    this.status = status;
    // the relay answered, not arpc (it says so: X-ARP-From: relay): a 404 or 503 from it says
    // nothing about a session, only that this client is not reachable right now
    this.fromRelay = fromRelay;
  }
}

const LEADS = {
  400: "Bad input",
  401: "No access",
  403: "Not allowed",
  404: "Not found",
  409: "Not now",
  413: "Too large",
  429: "Too busy",
  500: "Server error",
  502: "The relay could not reach arpc",
  503: "Unavailable",
  504: "The relay timed out waiting for arpc",
};

/** A failure in words: the server's own message behind a short lead for its status. */
export function describe(status, data, text) {
  let message = data && typeof data.error === "string" ? data.error : (text || "").trim().slice(0, 300);
  if (!message) message = `HTTP ${status}`;
  if (status === 401 && data && data.reason === "missing") message = "this console needs an access token: open the Public URL arpc printed (…&access=…) or a share link";
  const lead = LEADS[status] || `HTTP ${status}`;
  return `${lead}: ${message}`;
}

let unauthorized = null;

/** Call ``handler(reason)`` whenever the API answers 401 (no valid access token). */
export function onUnauthorized(handler) {
  unauthorized = handler;
}

/** A JSON request; resolves to the parsed body, or rejects with an ApiError whose message is words. */
export async function api(path, { method = "GET", body } = {}) {
  // X-ARP-Console: where the browser sends no fetch metadata (plain HTTP on a host name), the
  // relay and arpc take a cookie-carrying call as the console's own only with this header, which
  // a page of another origin cannot add without a CORS preflight
  const init = { method, credentials: "same-origin", cache: "no-store", headers: { Accept: "application/json", "X-ARP-Console": "1" } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, "Cannot reach the relay: the network is down or the server is unreachable.", true);
  }
  const text = await response.text();
  let data = null;
  try {
    data = JSON.parse(text);
  } catch (e) {
    data = null;
  }
  if (!response.ok) {
    const fromRelay = response.headers.get("X-ARP-From") === "relay" || (data !== null && data.from === "relay");
    const error = new ApiError(response.status, describe(response.status, data, text), fromRelay);
    error.reason = data && data.reason;
    if (response.status === 401 && unauthorized && !fromRelay) unauthorized(error.reason || "missing");
    throw error;
  }
  if (data === null) throw new ApiError(response.status, "The server answered with something that is not JSON.");
  return data;
}

/** The ws:// or wss:// URL of a relative path, next to this page. */
export function wsUrl(path) {
  const url = new URL(path, location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return url.href;
}
