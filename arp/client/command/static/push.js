// Web Push for the console: the service worker (registered on every page load) and the
// "Notifications" panel that asks for permission (only when its button is pressed) and
// subscribes this device with arpc (POST /api/push/subscriptions).
//
// Only the service worker's push handler shows notifications (sw.js); this page never does.

import { api } from "./api.js";
import { h } from "./render.js";

const EVENTS = [
  ["approval", "an approval waits"],
  ["question", "a question waits"],
  ["finished", "a session finished"],
  ["failed", "a session failed"],
];
const STORED = "arp-push-subscription"; // this device's subscription id at arpc

let registration = null;

/** Register sw.js on this origin (every page load; it shows nothing until subscribed). */
export async function registerWorker() {
  if (!("serviceWorker" in navigator)) return null;
  try {
    registration = await navigator.serviceWorker.register("sw.js", { scope: "./" });
  } catch (e) {
    registration = null; // e.g. the relay's shared address, where workers are refused
  }
  navigator.serviceWorker.addEventListener("message", (event) => {
    const m = event.data || {};
    if (m.type === "open" && typeof m.hash === "string" && m.hash.startsWith("#/")) location.hash = m.hash;
  });
  return registration;
}

function isIOS() {
  return /iPad|iPhone|iPod/.test(navigator.userAgent) || (navigator.platform === "MacIntel" && navigator.maxTouchPoints > 1);
}

function standalone() {
  return window.matchMedia("(display-mode: standalone)").matches || navigator.standalone === true;
}

/** Why this browser cannot get push here, or "" when it can. */
export function unsupported() {
  if (isIOS() && !standalone()) {
    return "On iPhone and iPad, notifications need the console on the Home Screen: tap Share, then Add to Home Screen, open it from there and come back here.";
  }
  if (!("serviceWorker" in navigator) || !("PushManager" in window) || typeof Notification === "undefined") {
    return "This browser cannot receive push notifications.";
  }
  if (!window.isSecureContext) return "Notifications need the console over HTTPS.";
  return "";
}

function keyBytes(base64url) {
  const padded = (base64url + "===".slice((base64url.length + 3) % 4)).replace(/-/g, "+").replace(/_/g, "/");
  return Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
}

/** Ask for permission, subscribe with the push service, register the subscription with arpc. */
export async function enablePush(events) {
  const why = unsupported();
  if (why) throw new Error(why);
  const permission = await Notification.requestPermission();
  if (permission !== "granted") throw new Error("notifications are blocked for this site: allow them in the browser's site settings");
  const reg = registration || (await navigator.serviceWorker.ready);
  const { publicKey } = await api("api/push/key");
  let sub = await reg.pushManager.getSubscription();
  if (sub && sub.options && sub.options.applicationServerKey) {
    const current = btoa(String.fromCharCode(...new Uint8Array(sub.options.applicationServerKey))).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
    if (current !== publicKey) {
      await sub.unsubscribe(); // made for another arpc key
      sub = null;
    }
  }
  if (!sub) sub = await reg.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: keyBytes(publicKey) });
  const body = { ...sub.toJSON(), events };
  delete body.expirationTime;
  const made = await api("api/push/subscriptions", { method: "POST", body });
  localStorage.setItem(STORED, made.id);
  return made;
}

/** Unsubscribe this device (with the push service and with arpc). */
export async function disablePush() {
  const id = localStorage.getItem(STORED);
  localStorage.removeItem(STORED);
  const reg = registration || (await navigator.serviceWorker.getRegistration());
  const sub = reg && (await reg.pushManager.getSubscription());
  if (sub) await sub.unsubscribe();
  if (id) await api(`api/push/subscriptions/${encodeURIComponent(id)}`, { method: "DELETE" }).catch(() => null);
}

/** The Devices screen's "Notifications" panel. */
export function pushPanel() {
  const status = h("p", { class: "muted", id: "push-status" });
  const error = h("div", { class: "error", id: "push-error", role: "alert" });
  const choices = h(
    "fieldset",
    { class: "scopes-choice", id: "push-events" },
    h("legend", {}, "Notify me when"),
    EVENTS.map(([e, label]) => h("label", { class: "check" }, h("input", { type: "checkbox", value: e, checked: true }), " ", label)),
  );
  const on = h("button", { type: "button", class: "primary", id: "push-enable" }, "Notifications");
  const off = h("button", { type: "button", id: "push-disable" }, "Turn off");
  const panel = h("section", { class: "push-panel", id: "push-panel" }, h("h2", {}, "Notifications on this device"), status, choices, h("div", { class: "row-actions" }, on, off), error);
  const paint = () => {
    const why = unsupported();
    const subscribed = !!localStorage.getItem(STORED) && typeof Notification !== "undefined" && Notification.permission === "granted";
    status.textContent =
      why ||
      (subscribed
        ? "This device gets a notification when the agent needs you, even with the console closed. Allow and Deny answer from the notification."
        : "Get a notification when the agent needs you, even with the console closed.");
    on.textContent = subscribed ? "Update notifications" : "Notifications";
    on.disabled = !!why && !isIOS();
    off.hidden = !subscribed;
    off.style.display = subscribed ? "" : "none"; // buttons are styled display: inline-block
  };
  on.addEventListener("click", async () => {
    error.textContent = "";
    on.disabled = true;
    try {
      const chosen = [...choices.querySelectorAll("input:checked")].map((i) => i.value);
      if (!chosen.length) throw new Error("choose at least one event");
      await enablePush(chosen);
    } catch (e) {
      error.textContent = `Notifications not turned on: ${e.message}`;
    } finally {
      on.disabled = false;
      paint();
    }
  });
  off.addEventListener("click", async () => {
    error.textContent = "";
    await disablePush();
    paint();
  });
  paint();
  return panel;
}
