// agentos browser client: start a run, follow its events with EventSource, survive drops and
// page reloads. An ES module with no dependencies; see README.md beside this file.
//
//   import { AgentOSClient } from "/static/agentos.js";
//   const client = new AgentOSClient();
//   const follower = await client.run("agents", "echo", "hello", {
//     onEvent: (event) => console.log(event.event_index, event.event, event.content),
//   });
//   await follower.done;   // resolves with the terminal event
//
// How a drop is survived:
// - The run is started with POST (background=true, stream=false), then followed with an
//   EventSource on GET /{kind}/{id}/runs/{run_id}/resume. When the connection drops the browser
//   reconnects by itself and sends Last-Event-ID, so the server resumes after the last event.
// - If the browser gives up (any non-200 answer: a proxy's 502/503, or 204/404/401), the
//   follower asks the same URL with fetch() to learn the status, then reopens (5xx, network),
//   finishes (204) or fails (4xx), with bounded, growing waits.
// - Every event is checked against the last index: a duplicate is dropped, a gap reopens the
//   stream from the last index. The caller sees each event once, in order.
// - The run (kind, id, run_id, resume token) and the last index are kept in sessionStorage, so
//   after a page reload resumeSaved() follows the same run from where the page left it.

/** The events that end a stream, per kind (a member's RunCompleted inside a team does not). */
export const TERMINAL_EVENTS = Object.freeze({
  agents: ["RunCompleted", "RunError", "RunCancelled"],
  teams: ["TeamRunCompleted", "TeamRunError", "TeamRunCancelled"],
  workflows: ["WorkflowCompleted", "WorkflowError", "WorkflowCancelled"],
});

/** Event names the follower listens for. EventSource only reports names it was told about;
 * pass `eventNames` to the client for events of your own components. */
export const EVENT_NAMES = Object.freeze([
  "RunStarted", "RunContent", "ToolCallStarted", "ToolCallCompleted",
  "RunCompleted", "RunError", "RunCancelled",
  "TeamRunStarted", "TeamRunContent", "TeamToolCallStarted", "TeamToolCallCompleted",
  "TeamRunCompleted", "TeamRunError", "TeamRunCancelled",
  "WorkflowStarted", "StepStarted", "StepCompleted",
  "WorkflowCompleted", "WorkflowError", "WorkflowCancelled",
]);

/** Meta frames: no id, come before the events of a (re)connection. */
export const META_EVENTS = Object.freeze(["catch_up", "subscribed", "replay"]);

/** An error with the HTTP status and the server's error code, when there is one. */
export class AgentOSError extends Error {
  constructor(message, { status = null, code = null, runId = null } = {}) {
    super(message);
    this.name = "AgentOSError";
    this.status = status;
    this.code = code;
    this.runId = runId;
  }
}

const FINAL_STATUSES = new Set([400, 401, 403, 404, 410, 413, 422]);

function newRunId() {
  if (globalThis.crypto && typeof crypto.randomUUID === "function") return crypto.randomUUID();
  // crypto.randomUUID needs a secure context; plain http on a LAN address is not one.
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

async function errorFrom(response, runId) {
  let detail = response.statusText;
  let code = null;
  try {
    const body = await response.json();
    detail = body.detail ?? detail;
    code = body.code ?? null;
  } catch {
    // not JSON: keep the status text
  }
  return new AgentOSError(`HTTP ${response.status}: ${detail}`, {
    status: response.status, code, runId,
  });
}

export class AgentOSClient {
  /**
   * @param {object} [options]
   * @param {string} [options.baseUrl=""] server origin, "" for the page's own
   * @param {string|null} [options.securityKey] sent as "Authorization: Bearer" on POST and
   *   fetch(); an EventSource uses the run's resume token instead (the key is never in a URL)
   * @param {string|null} [options.token] a JWT from your identity provider, sent the same way
   * @param {(() => Promise<string>)|null} [options.refreshToken] returns a fresh JWT; called
   *   once when a request is answered 401 (an expired token), which is then sent again
   * @param {Storage|null} [options.storage=sessionStorage] where the followed run is kept
   * @param {string} [options.storageKey="agentos.run"]
   * @param {string[]} [options.eventNames] extra event names to listen for
   * @param {number} [options.maxRetries=8] reopen attempts in a row before giving up
   * @param {number} [options.backoffInitial=250] ms before the first reopen, doubling
   * @param {number} [options.backoffMax=5000] ms cap of the wait between reopens
   */
  constructor({
    baseUrl = "",
    securityKey = null,
    token = null,
    refreshToken = null,
    storage = globalThis.sessionStorage ?? null,
    storageKey = "agentos.run",
    eventNames = [],
    maxRetries = 8,
    backoffInitial = 250,
    backoffMax = 5000,
  } = {}) {
    this.baseUrl = baseUrl.replace(/\/+$/, "");
    this.securityKey = securityKey || null;
    this.token = token || null;
    this.refreshToken = refreshToken;
    this.storage = storage;
    this.storageKey = storageKey;
    this.eventNames = [...new Set([...EVENT_NAMES, ...eventNames])];
    this.maxRetries = maxRetries;
    this.backoffInitial = backoffInitial;
    this.backoffMax = backoffMax;
  }

  _headers(extra = {}) {
    const headers = { ...extra };
    const credential = this.token || this.securityKey;
    if (credential) headers.Authorization = `Bearer ${credential}`;
    return headers;
  }

  /** fetch() with the credential; on 401, one more try after refreshToken() (if given). */
  async _fetch(url, init = {}) {
    const sent = this.token;
    const response = await fetch(url, { ...init, headers: this._headers(init.headers) });
    if (response.status !== 401 || !this.refreshToken) return response;
    // Another request may have refreshed the token meanwhile: use that one if so.
    if (this.token === sent) this.token = await this.refreshToken();
    return fetch(url, { ...init, headers: this._headers(init.headers) });
  }

  /**
   * Start a background run. Resolves with {kind, id, runId, sessionId, resumeToken,
   * lastEventIndex: -1}: the state that follow() takes.
   */
  async startRun(kind, id, message, { sessionId = null, userId = null, runId = null } = {}) {
    const fields = { message, stream: "false", background: "true", run_id: runId || newRunId() };
    if (sessionId) fields.session_id = sessionId;
    if (userId) fields.user_id = userId;
    const response = await this._fetch(`${this.baseUrl}/${kind}/${encodeURIComponent(id)}/runs`, {
      method: "POST",
      headers: { "Content-Type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams(fields),
    });
    if (response.status !== 202) throw await errorFrom(response, fields.run_id);
    const body = await response.json();
    return {
      kind,
      id,
      runId: body.run_id,
      sessionId: body.session_id ?? null,
      resumeToken: body.resume_token ?? response.headers.get("X-Resume-Token"),
      lastEventIndex: -1,
    };
  }

  /** Start a run and follow it; resolves with the RunFollower once the run exists. */
  async run(kind, id, message, handlers = {}, options = {}) {
    const state = await this.startRun(kind, id, message, options);
    return this.follow(state, handlers);
  }

  /**
   * Follow a run from state.lastEventIndex (-1: from the start). handlers:
   *   onEvent(event)   each event once, in order (the parsed JSON of the frame)
   *   onMeta(meta)     catch_up / subscribed / replay frames
   *   onStatus(status) "connecting" | "live" | "reconnecting" | "done" | "failed"
   *   onDone(event)    the terminal event (null if the run had ended before we got here)
   *   onError(error)   an AgentOSError that ended following
   */
  follow(state, handlers = {}) {
    return new RunFollower(this, { lastEventIndex: -1, ...state }, handlers);
  }

  /** The run this tab was following, or null. */
  savedRun() {
    if (!this.storage) return null;
    try {
      const state = JSON.parse(this.storage.getItem(this.storageKey) || "null");
      return state && state.runId && state.kind && state.id ? state : null;
    } catch {
      return null;
    }
  }

  /** After a page reload: follow the saved run again from its last index, or return null. */
  resumeSaved(handlers = {}) {
    const state = this.savedRun();
    return state ? this.follow(state, handlers) : null;
  }

  clearSaved() {
    this.storage?.removeItem(this.storageKey);
  }

  _save(state) {
    this.storage?.setItem(this.storageKey, JSON.stringify(state));
  }

  _resumeUrl(state) {
    const url = new URL(
      `${this.baseUrl}/${state.kind}/${encodeURIComponent(state.id)}/runs/` +
        `${encodeURIComponent(state.runId)}/resume`,
      globalThis.location?.href,
    );
    // Left out at -1 so that the browser's own Last-Event-ID drives its reconnects.
    if (state.lastEventIndex >= 0) {
      url.searchParams.set("last_event_index", String(state.lastEventIndex));
    }
    if (state.resumeToken) url.searchParams.set("token", state.resumeToken);
    return url.toString();
  }

  /** GET the run object (needs the security key when the server has one). */
  async getRun(kind, id, runId) {
    const response = await this._fetch(
      `${this.baseUrl}/${kind}/${encodeURIComponent(id)}/runs/${encodeURIComponent(runId)}`,
      { headers: { Accept: "application/json" } },
    );
    if (!response.ok) throw await errorFrom(response, runId);
    return response.json();
  }

  /** Ask the server to cancel a run; resolves with the run object. */
  async cancel(kind, id, runId) {
    const response = await this._fetch(
      `${this.baseUrl}/${kind}/${encodeURIComponent(id)}/runs/${encodeURIComponent(runId)}/cancel`,
      { method: "POST", headers: { Accept: "application/json" } },
    );
    if (!response.ok) throw await errorFrom(response, runId);
    return response.json();
  }
}

/** Follows one run until its terminal event. `done` settles when following ends. */
export class RunFollower {
  constructor(client, state, handlers) {
    this.client = client;
    this.state = { ...state };
    this.handlers = handlers;
    this.status = "connecting";
    this.terminalEvent = null;
    /** EventSource connections opened so far, for diagnostics and tests. */
    this.connections = 0;
    this._source = null;
    this._timer = null;
    this._failures = 0;
    this._closed = false;
    // Back online: retry now instead of after the rest of a backoff wait.
    this._onOnline = () => {
      if (this.status === "reconnecting") this._reopenSoon(0);
    };
    this.done = new Promise((resolve, reject) => {
      this._resolve = resolve;
      this._reject = reject;
    });
    // Callers who only use the handlers should not see an unhandled rejection.
    this.done.catch(() => {});
    client._save(this.state);
    globalThis.addEventListener?.("online", this._onOnline);
    this._open();
  }

  get runId() {
    return this.state.runId;
  }

  get lastEventIndex() {
    return this.state.lastEventIndex;
  }

  /** Stop following (the run goes on; resumeSaved() can pick it up again). */
  close() {
    this._stop();
  }

  _setStatus(status) {
    if (this.status === status) return;
    this.status = status;
    this._call("onStatus", status);
  }

  _call(name, value) {
    const handler = this.handlers[name];
    if (!handler) return;
    try {
      handler(value);
    } catch (err) {
      // A broken handler must not break the stream; report it where it can be seen.
      console.error(`agentos: ${name} handler failed`, err);
    }
  }

  _open() {
    if (this._closed) return;
    this._setStatus(this.connections === 0 ? "connecting" : "reconnecting");
    const source = new EventSource(this.client._resumeUrl(this.state));
    this._source = source;
    this.connections += 1;
    const onEvent = (message) => this._onEvent(source, message);
    for (const name of this.client.eventNames) source.addEventListener(name, onEvent);
    source.addEventListener("message", onEvent);
    for (const name of META_EVENTS) {
      source.addEventListener(name, (message) => this._onMeta(message));
    }
    source.addEventListener("open", () => this._setStatus("live"));
    // "error" is both the server's error meta frame (a MessageEvent with data) and the
    // EventSource's own connection error (a plain Event).
    source.addEventListener("error", (event) => {
      if (source !== this._source) return;
      if (typeof event.data === "string") this._onServerError(event);
      else this._onConnectionError(source);
    });
  }

  _onMeta(message) {
    let meta;
    try {
      meta = JSON.parse(message.data);
    } catch {
      return;
    }
    this._call("onMeta", meta);
  }

  _onEvent(source, message) {
    if (source !== this._source || this._closed) return;
    let event;
    try {
      event = JSON.parse(message.data);
    } catch {
      this._fail(new AgentOSError("an event frame is not JSON", { runId: this.state.runId }));
      return;
    }
    const index = Number.isInteger(event.event_index)
      ? event.event_index
      : Number.parseInt(message.lastEventId, 10);
    if (!Number.isInteger(index) || index <= this.state.lastEventIndex) return; // a duplicate
    if (index !== this.state.lastEventIndex + 1) {
      // Never hand over an event after a gap: read again from the last index we have. A gap
      // that comes back is an event whose name this follower does not listen for.
      this._failures += 1;
      if (this._failures > this.client.maxRetries) {
        this._fail(new AgentOSError(
          `event ${this.state.lastEventIndex + 1} never arrived; if it has a name of your own, ` +
            "add it to the client's eventNames",
          { code: "index_gap", runId: this.state.runId },
        ));
        return;
      }
      this._reopenSoon(0);
      return;
    }
    this._failures = 0;
    this.state.lastEventIndex = index;
    this.client._save(this.state);
    this._call("onEvent", event);
    const terminal = TERMINAL_EVENTS[this.state.kind] || [];
    if (terminal.includes(event.event)) this._finish(event);
  }

  _onServerError(message) {
    let data = {};
    try {
      data = JSON.parse(message.data);
    } catch {
      // keep the generic text below
    }
    this._fail(new AgentOSError(data.error || "the server ended the stream", {
      code: data.code ?? null, runId: this.state.runId,
    }));
  }

  _onConnectionError(source) {
    if (this._closed) return;
    if (source.readyState === EventSource.CONNECTING) {
      // The browser reconnects by itself, sending Last-Event-ID.
      this._setStatus("reconnecting");
      return;
    }
    // CLOSED: the browser will not retry (a non-200 answer). Find out why, then act.
    this._reopenSoon(this._backoff());
  }

  _backoff() {
    const { backoffInitial, backoffMax } = this.client;
    const delay = Math.min(backoffMax, backoffInitial * 2 ** this._failures);
    return delay * (0.5 + Math.random() / 2);
  }

  _reopenSoon(delay) {
    if (this._closed) return;
    this._source?.close();
    this._source = null;
    this._setStatus("reconnecting");
    clearTimeout(this._timer);
    this._timer = setTimeout(() => this._probeAndReopen(), delay);
  }

  async _probeAndReopen() {
    if (this._closed) return;
    const url = this.client._resumeUrl(this.state);
    const abort = new AbortController();
    let response = null;
    try {
      const init = { cache: "no-store", signal: abort.signal };
      response = this.state.resumeToken
        ? await fetch(url, init) // the resume token in the URL is the credential
        : await this.client._fetch(url, init);
    } catch {
      response = null; // offline, refused, reset: retry below
    }
    if (this._closed) {
      abort.abort();
      return;
    }
    if (response && response.status === 200) {
      abort.abort(); // the stream is there again: let an EventSource read it
      this._open();
      return;
    }
    if (response && response.status === 204) {
      this._finish(null); // the cursor already sits on the terminal event
      return;
    }
    if (response && FINAL_STATUSES.has(response.status)) {
      this._fail(await errorFrom(response, this.state.runId));
      return;
    }
    this._failures += 1;
    if (this._failures > this.client.maxRetries) {
      const why = response ? `HTTP ${response.status}` : "the server cannot be reached";
      this._fail(new AgentOSError(`gave up after ${this.client.maxRetries} attempts: ${why}`, {
        status: response?.status ?? null, runId: this.state.runId,
      }));
      return;
    }
    this._reopenSoon(this._backoff());
  }

  _stop() {
    this._closed = true;
    clearTimeout(this._timer);
    this._source?.close();
    this._source = null;
    globalThis.removeEventListener?.("online", this._onOnline);
  }

  _finish(event) {
    if (this._closed) return;
    this._stop();
    this.terminalEvent = event;
    this.client.clearSaved();
    this._setStatus("done");
    this._call("onDone", event);
    this._resolve(event);
  }

  _fail(error) {
    if (this._closed) return;
    this._stop();
    // A run that cannot be followed any more (unknown, expired token) is not resumed on reload.
    if (error.status !== null && error.status < 500) this.client.clearSaved();
    this._setStatus("failed");
    this._call("onError", error);
    this._reject(error);
  }
}
