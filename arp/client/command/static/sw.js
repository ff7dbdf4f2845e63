// The console's service worker: shows arpc's Web Push messages as notifications, and answers an
// approval from its Allow / Deny actions.
//
// It lives on this client's own origin (its port, or its host name under --domain), the only
// place the relay lets a service worker be. A push message (arp/client/command/push.py) carries
// the event, the session and approval ids and the words to show, never a URL: links are built
// from this worker's own scope. It handles no fetch: pages and the API always go to the network.

const SCOPE = self.registration.scope; // e.g. https://c-1234.relay.example/

self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("activate", (event) => event.waitUntil(self.clients.claim()));

self.addEventListener("push", (event) => {
  let data;
  try {
    data = event.data ? event.data.json() : {};
  } catch (e) {
    data = { title: "ARP console", body: event.data ? event.data.text() : "" };
  }
  event.waitUntil(showPush(data || {}));
});

/** The notification for one push message. */
function showPush(data) {
  const ids = { event: data.event, sessionId: data.sessionId, approvalId: data.approvalId };
  const options = {
    body: String(data.body || "").slice(0, 1000),
    tag: data.approvalId ? `approval-${data.approvalId}` : `session-${data.sessionId || ""}`,
    data: ids,
    icon: new URL("icon-192.png", SCOPE).href,
    badge: new URL("icon-badge-96.png", SCOPE).href,
    timestamp: Date.now(),
  };
  if (data.event === "approval" && data.approvalId) {
    // what will run is in the body ("Runs: <command> in <directory>"); Allow answers with this
    // device's access cookie, so only a device allowed to approve can
    options.actions = [
      { action: "allow", title: "Allow" },
      { action: "deny", title: "Deny" },
    ];
    options.requireInteraction = true;
  } else if (data.event === "question") {
    options.requireInteraction = true;
  }
  return self.registration.showNotification(String(data.title || "ARP console").slice(0, 120), options);
}

self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  event.waitUntil(answerFromNotification(event.notification, event.action));
});

/** Allow / Deny: post the answer; anything else (a tap): open the session. */
async function answerFromNotification(notification, action) {
  const data = notification.data || {};
  if ((action === "allow" || action === "deny") && data.sessionId && data.approvalId) {
    return answer(data, action);
  }
  return openSession(data.sessionId);
}
self.answerFromNotification = answerFromNotification; // for tests (Playwright evaluates it here)

async function answer(data, decision) {
  const path = `api/sessions/${encodeURIComponent(data.sessionId)}/approvals/${encodeURIComponent(data.approvalId)}`;
  let message;
  let ok = false;
  try {
    const response = await fetch(new URL(path, SCOPE), {
      method: "POST",
      credentials: "same-origin",
      cache: "no-store",
      headers: { "Content-Type": "application/json", Accept: "application/json", "X-ARP-Console": "1" },
      body: JSON.stringify({ decision }),
    });
    let body = null;
    try {
      body = await response.json();
    } catch (e) {
      body = null;
    }
    ok = response.ok;
    message = ok ? `${decision === "allow" ? "Allowed" : "Denied"}` : (body && body.error) || `HTTP ${response.status}`;
  } catch (e) {
    message = "the relay could not be reached";
  }
  const tag = `approval-${data.approvalId}`;
  const options = { tag, data: { ...data, answered: ok }, icon: new URL("icon-192.png", SCOPE).href, silent: ok };
  if (ok) {
    options.body = message;
    await self.registration.showNotification("Answered", options);
    // a quiet confirmation, gone by itself
    const shown = await self.registration.getNotifications({ tag });
    setTimeout(() => shown.forEach((n) => n.close()), 4000);
  } else {
    options.body = `Not answered: ${message}. Tap to open the session.`;
    await self.registration.showNotification("Could not answer", options);
  }
  await tellPages({ type: "approval-answered", ...data, ok, message });
  return { ok, message };
}

async function openSession(sessionId) {
  const target = new URL(sessionId ? `#/session/${encodeURIComponent(sessionId)}` : "#/sessions", SCOPE).href;
  const windows = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
  for (const client of windows) {
    if (client.url.startsWith(SCOPE)) {
      client.postMessage({ type: "open", hash: new URL(target).hash }); // push.js follows it
      try {
        await client.focus();
      } catch (e) {
        /* focusing needs the tap's user activation */
      }
      return { opened: target };
    }
  }
  await self.clients.openWindow(target);
  return { opened: target };
}

async function tellPages(message) {
  const windows = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
  for (const client of windows) client.postMessage(message);
}
