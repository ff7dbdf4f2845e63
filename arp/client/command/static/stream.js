// A session's live events over the WebSocket stream, reconnecting by itself.
//
// The server sends the backlog after ?since=N, then live events, then the run's final
// "status" event and a normal close. We remember the last seq we handled and reconnect
// with since=<it> after any other close (network drop, a phone that slept, a 1013 for a slow
// viewer), so nothing repeats and nothing is missed; events at or below it are dropped.
//
// Only arpc can say a session is gone. While the relay or arpc is away (a restart, an outage)
// the relay answers for arpc (503 "reconnecting", or 404 just after the relay itself restarted);
// such answers carry X-ARP-From: relay and never stop the stream: it keeps retrying, at least
// every 5 s, with the relay's reason shown, and resumes from lastSeq once arpc is back.

import { api, wsUrl } from "./api.js";

const DELAYS = [500, 1000, 2000, 4000, 5000];
/** Close codes arpc sends when the viewer's access token stops being valid: no reconnecting. */
export const ACCESS_CLOSED = {
  4001: "Your access was revoked: this device can no longer watch this session.",
  4002: "Your access link has expired: ask the owner for a new one.",
};

export class SessionStream {
  /**
   * @param {string} id the session id
   * @param {number} since the last seq already shown
   * @param {{onEvent: Function, onState: Function}} handlers
   */
  constructor(id, since, { onEvent, onState }) {
    this.id = id;
    this.lastSeq = since;
    this.onEvent = onEvent;
    this.onState = onState;
    this.ws = null;
    this.attempt = 0;
    this.timer = null;
    this.retrying = null; // the retry() in progress; a connect() supersedes it
    this.stopped = false;
    this.ended = false;
    this.connections = 0;
    this.hiddenAt = null;
    this._visibility = () => {
      if (document.visibilityState === "hidden") {
        this.hiddenAt = Date.now();
      } else if (!this.ws || this.ws.readyState !== WebSocket.OPEN || Date.now() - (this.hiddenAt || 0) > 10000) {
        this.kick(); // a phone that slept: its socket may be dead without knowing it
      }
    };
    this._online = () => this.kick();
    document.addEventListener("visibilitychange", this._visibility);
    window.addEventListener("online", this._online);
    this.connect();
  }

  connect() {
    clearTimeout(this.timer);
    this.timer = null;
    this.retrying = null;
    if (this.stopped || this.ended) return;
    const url = wsUrl(`api/sessions/${encodeURIComponent(this.id)}/stream?since=${this.lastSeq}`);
    const ws = new WebSocket(url);
    this.ws = ws;
    this.connections += 1;
    this.onState(this.attempt ? "reconnecting" : "connecting", "");
    let opened = false;
    ws.onopen = () => {
      if (this.ws !== ws) return;
      opened = true;
      this.attempt = 0;
      this.onState("live", "");
    };
    ws.onmessage = (message) => {
      if (this.ws !== ws) return;
      let event;
      try {
        event = JSON.parse(message.data);
      } catch (e) {
        return;
      }
      if (typeof event.seq !== "number" || event.seq <= this.lastSeq) return; // no repeats
      this.lastSeq = event.seq;
      if (event.kind === "status") this.ended = true;
      this.onEvent(event);
    };
    ws.onclose = (close) => {
      if (this.ws !== ws) return;
      this.ws = null;
      if (this.stopped) return;
      if (this.ended) {
        this.onState("ended", "");
        this.dispose();
        return;
      }
      if (ACCESS_CLOSED[close.code]) {
        this.onState("denied", ACCESS_CLOSED[close.code]);
        this.dispose();
        return;
      }
      this.retry(opened ? `connection lost (${close.code || "no code"})` : "could not connect");
    };
  }

  async retry(why) {
    const turn = {};
    this.retrying = turn;
    const delay = DELAYS[Math.min(this.attempt, DELAYS.length - 1)];
    this.attempt += 1;
    this.onState("reconnecting", `${why}; reconnecting in ${Math.round(delay / 100) / 10} s…`);
    let problem = null;
    if (this.attempt > 1 || why === "could not connect") {
      // ask the API why, in words (client offline, session deleted...)
      try {
        await api(`api/sessions/${encodeURIComponent(this.id)}?since=${this.lastSeq}`);
      } catch (e) {
        problem = e;
      }
    }
    // a kick (network back, page visible again) may have connected while we asked: that socket
    // owns the stream now; a timer from here would open a second one beside it
    if (this.stopped || this.retrying !== turn) return;
    if (problem && problem.status === 404 && !problem.fromRelay) {
      this.onState("gone", problem.message);
      this.dispose();
      return;
    }
    if (problem) this.onState("reconnecting", `${problem.message} — retrying in ${Math.round(delay / 100) / 10} s…`);
    this.timer = setTimeout(() => this.connect(), delay);
  }

  /** Reconnect now (the page became visible again or the network came back). */
  kick() {
    if (this.stopped || this.ended) return;
    if (this.ws) {
      // start over from lastSeq on a fresh socket
      const old = this.ws;
      this.ws = null;
      old.onclose = null;
      old.close();
    }
    this.attempt = 0;
    this.connect();
  }

  dispose() {
    this.stopped = true;
    clearTimeout(this.timer);
    document.removeEventListener("visibilitychange", this._visibility);
    window.removeEventListener("online", this._online);
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      ws.onclose = null;
      ws.close();
    }
  }
}
