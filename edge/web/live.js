// What the three pages share: the token (from the URL fragment or the form, kept in
// sessionStorage only), the Live API's error codes in words, the WebSocket URL, and
// the captions view.
//
// Transcript text and speaker names come from the network: they only ever reach the
// DOM through textContent, never as HTML.

const TOKEN_KEY = "edge.token";

/** The token: a `#token=...` fragment wins (it is then removed from the address bar,
 * and never reached the server: browsers do not send fragments), else what this tab
 * stored before. */
export function takeToken() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  const given = fragment.get("token");
  if (given !== null) {
    storeToken(given);
    fragment.delete("token");
    const rest = fragment.toString();
    history.replaceState(null, "", location.pathname + location.search + (rest ? "#" + rest : ""));
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

export function storeToken(token) {
  const trimmed = token.trim().replace(/^Bearer\s+/i, "");
  if (trimmed) sessionStorage.setItem(TOKEN_KEY, trimmed);
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** Wire the token form: submitting stores the token and calls `onToken(token)`;
 * "Forget" removes it. Returns `open()`, which shows the form (when a token is
 * missing or was refused). */
export function tokenForm(onToken) {
  const panel = document.getElementById("token-panel");
  const form = document.getElementById("token-form");
  const input = document.getElementById("token-input");
  const forget = document.getElementById("token-forget");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    storeToken(input.value);
    input.value = "";
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) {
      panel.open = false;
      onToken(token);
    }
  });
  forget.addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    panel.open = true;
    input.focus();
  });
  return () => {
    panel.open = true;
  };
}

/** Codes after which retrying with the same token cannot help. */
export const TOKEN_PROBLEMS = new Set([
  "missing_token", "invalid_token", "token_expired", "token_not_yet_valid", "token_revoked",
  "invalid_request", "insufficient_scope",
]);

const WORDS = {
  missing_token: "No token yet. Paste one below, or open this page with #token=… at the end of its address.",
  invalid_token: "The device refused the token: it is malformed, signed with another key, or misses a required claim. Paste a valid token below.",
  token_expired: "The token has expired. Get a new one (edge token …) and paste it below.",
  token_not_yet_valid: "The token is not valid yet: check the clocks of this computer and of the device.",
  token_revoked: "The token has been revoked on this device. Ask for a new one.",
  invalid_request: "The token was sent twice; reload the page.",
  insufficient_scope: "The token lacks a scope this page needs.",
  no_room: "The room microphone is off: this device has none configured (microphone.enabled is false).",
  no_journal: "This device keeps no journal, so there are no transcripts to show.",
  server_busy: "The device is busy (too many sessions or listeners).",
  session_limit: "This token already has as many sessions open as it may.",
  server_shutdown: "The device is restarting.",
  slow_listener: "This screen fell behind the room stream.",
  idle_timeout: "The session ended: no audio arrived for too long.",
  session_too_long: "The session reached the device's maximum length.",
  rate_limited: "The session sent too many messages and was closed.",
  internal_error: "The device failed in this session (see its log).",
  not_found: "Not found.",
};

const NOTICES = {
  mic_lost: "The room microphone stopped delivering audio.",
  mic_overrun: "Some audio was dropped: the device could not keep up.",
  clipping: "The microphone is clipping: lower its gain or move back.",
  silence: "The microphone hears nothing: check that it is connected and unmuted.",
  realtime_lag: "The device is behind real time: captions come late, nothing is lost.",
  slow_listener: "This screen fell behind and was disconnected; catching up…",
  token_expiring: "The token expires soon: paste a new one to go on.",
  journal_error: "The device could not save a line to its journal.",
  sample_rate_mismatch: "The audio's sample rate differs from the one announced.",
  audio_format: "Multi-channel audio is being mixed down to mono.",
  bad_message: "The device ignored a message it did not understand.",
};

/** A warning's code in words. */
export function notice(code) {
  return NOTICES[code] ?? `The device warns: ${code}.`;
}

/** A refusal or an error message in words, naming what is wrong. */
export function describe(code, scopeHint) {
  if (code === "insufficient_scope" && scopeHint) return scopeHint;
  return WORDS[code] ?? `The device reported: ${code}.`;
}

/** For fetch(): an HTTP status and its JSON error body in words. */
export async function describeResponse(response, scopeHint) {
  let code = null;
  try {
    const body = await response.json();
    if (body && typeof body.code === "string") code = body.code;
  } catch {
    // not JSON: the status says enough
  }
  if (code) return describe(code, scopeHint);
  if (response.status === 401) return describe("invalid_token");
  if (response.status === 403) return describe("insufficient_scope", scopeHint);
  return `The device answered ${response.status} ${response.statusText}.`;
}

/** The Live API URL on this origin (wss: when the page came over https:). */
export function liveUrl(params, token) {
  const query = new URLSearchParams(params);
  query.set("errors", "message"); // refusals as messages: a browser cannot read a handshake's status
  query.set("token", token); // browsers cannot set headers on a WebSocket
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/ws/transcribe?${query}`;
}

/** Reconnection delays: 0.5 s doubling to 15 s, each between half and all of that. */
export function backoff(attempt) {
  const full = Math.min(15000, 500 * 2 ** attempt);
  return full / 2 + Math.random() * (full / 2);
}

export function clockTime(date = new Date()) {
  return date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

/** Milliseconds into a stream as H:MM:SS. */
export function streamTime(ms) {
  const s = Math.max(0, Math.floor(ms / 1000));
  const mm = String(Math.floor(s / 60) % 60).padStart(2, "0");
  const ss = String(s % 60).padStart(2, "0");
  return `${Math.floor(s / 3600)}:${mm}:${ss}`;
}

/** The status line (role="status"): a state and, apart, the latest notice. */
export class Status {
  constructor(element) {
    this.state = element.querySelector(".state");
    this.notice = element.querySelector(".notice");
    this.element = element;
  }

  set(text, kind = "ok") {
    this.state.textContent = text;
    this.element.dataset.kind = kind;
  }

  note(text) {
    this.notice.textContent = text;
  }
}

const PALETTE_SIZE = 8;

/** Categories with a style of their own (colour, underline and a mark: style.css);
 * any other category gets the plain term style. */
const TERM_CATEGORIES = new Set(["symptom", "condition", "drug", "dose", "anatomy", "procedure"]);

function isMs(value) {
  return Number.isInteger(value) && value >= 0;
}

/** The words of a final that are listed terms: [{first, last, term}] in order, from its
 * `terms` (word times). None when its `words` do not spell its `text` or anything is
 * malformed: a journaled or relayed record is checked, not trusted. */
export function termSpans(message) {
  const { words, terms } = message;
  if (!Array.isArray(words) || !Array.isArray(terms) || !terms.length) return [];
  if (!words.every((w) => w && typeof w.word === "string" && isMs(w.start_ms) && isMs(w.end_ms))) return [];
  if (words.map((w) => w.word).join(" ") !== String(message.text).split(/\s+/).filter(Boolean).join(" ")) return [];
  const spans = [];
  for (const term of terms) {
    if (!term || !isMs(term.start_ms) || !isMs(term.end_ms) || typeof term.category !== "string") continue;
    const inside = [];
    words.forEach((w, i) => {
      if (w.start_ms >= term.start_ms && w.end_ms <= term.end_ms) inside.push(i);
    });
    if (inside.length && (!spans.length || inside[0] > spans[spans.length - 1].last)) {
      spans.push({ first: inside[0], last: inside[inside.length - 1], term });
    }
  }
  return spans;
}

/** A final's text as DOM nodes: plain text, with each listed term in a `<mark>` that
 * says its category by colour, underline and mark, and in words in its title. */
export function textWithTerms(message) {
  const spans = termSpans(message);
  if (!spans.length) return [document.createTextNode(message.text)];
  const words = message.words.map((w) => w.word);
  const nodes = [];
  let at = 0;
  const plain = (from, to) => {
    if (to > from) nodes.push(document.createTextNode(words.slice(from, to).join(" ") + " "));
  };
  for (const { first, last, term } of spans) {
    plain(at, first);
    const category = term.category.toLowerCase();
    const mark = document.createElement("mark");
    mark.className = `term term-${TERM_CATEGORIES.has(category) ? category : "other"}`;
    mark.dataset.category = category;
    if (typeof term.term === "string") mark.dataset.term = term.term;
    if (typeof term.code === "string") mark.dataset.code = term.code;
    const listed = typeof term.term === "string" ? term.term : words.slice(first, last + 1).join(" ");
    mark.title = `${category}: ${listed}${typeof term.code === "string" ? ` (${term.code})` : ""}`;
    mark.textContent = words.slice(first, last + 1).join(" ");
    nodes.push(mark);
    at = last + 1;
    if (at < words.length) nodes.push(document.createTextNode(" "));
  }
  plain(at, words.length);
  const tail = nodes[nodes.length - 1];
  if (tail.nodeType === Node.TEXT_NODE) tail.textContent = tail.textContent.replace(/ $/, "");
  return nodes;
}

/** The captions: one line per final (class `final`, speaker in `data-speaker`), and the
 * utterance in progress apart (class `partial`), replaced by its final. */
export class Captions {
  constructor(log, { maxLines = 500 } = {}) {
    this.log = log;
    this.maxLines = maxLines;
    this.partial = null;
    this.colours = new Map(); // speaker key -> palette slot, kept for the page's life
  }

  showPartial(text) {
    if (!text) {
      this.clearPartial();
      return;
    }
    if (this.partial === null) {
      this.partial = document.createElement("p");
      this.partial.className = "partial";
    }
    this.partial.textContent = text;
    this.log.append(this.partial); // stays (or moves) last
    this.scroll();
  }

  clearPartial() {
    this.partial?.remove();
    this.partial = null;
  }

  /** A final `transcription` message as a line; `time` is the text of its time. */
  addFinal(message, time) {
    this.clearPartial();
    if (typeof message.text !== "string" || !message.text.trim()) return null;
    const line = document.createElement("p");
    line.className = "final";
    const speaker = typeof message.speaker === "string" ? message.speaker : "";
    line.dataset.speaker = speaker;
    if (message.seq !== undefined) line.dataset.seq = String(message.seq);
    if (message.room_id) line.dataset.room = String(message.room_id);
    const when = document.createElement("time");
    when.className = "time";
    when.textContent = time;
    const who = document.createElement("span");
    who.className = "speaker";
    who.textContent = speaker;
    if (speaker) {
      line.classList.add(`speaker-${this.slot(message.speaker_id || speaker)}`);
      if (typeof message.speaker_role === "string" && message.speaker_role) {
        who.title = message.speaker_role;
      }
    } else {
      line.classList.add("speaker-unknown");
    }
    const text = document.createElement("span");
    text.className = "text";
    text.append(...textWithTerms(message));
    line.append(when, who, text);
    this.log.append(line);
    while (this.log.querySelectorAll(".final").length > this.maxLines) {
      this.log.querySelector(".final").remove();
    }
    this.scroll();
    return line;
  }

  /** A colour slot for a speaker: the same one every time, and (up to the palette's
   * size) a different one for each speaker; the first choice is a hash of the key, so
   * it is usually the same after a reload too. */
  slot(key) {
    if (this.colours.has(key)) return this.colours.get(key);
    let hash = 0;
    for (const ch of key) hash = (hash * 31 + ch.codePointAt(0)) >>> 0;
    const taken = new Set(this.colours.values());
    let slot = hash % PALETTE_SIZE;
    for (let i = 0; i < PALETTE_SIZE && taken.has(slot); i++) slot = (slot + 1) % PALETTE_SIZE;
    this.colours.set(key, slot);
    return slot;
  }

  clear() {
    this.log.replaceChildren();
    this.partial = null;
  }

  scroll() {
    this.log.scrollTop = this.log.scrollHeight;
  }
}

/** Parse one server message; null for anything that is not a JSON object with a type. */
export function parseMessage(data) {
  if (typeof data !== "string") return null;
  try {
    const message = JSON.parse(data);
    return message && typeof message === "object" && typeof message.type === "string" ? message : null;
  } catch {
    return null;
  }
}
