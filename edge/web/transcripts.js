// Records: the finished sessions this token may read (GET /api/transcripts), one shown
// (GET /transcripts/<id>), and downloaded as text or WebVTT. The token goes in the
// Authorization header: fetch() can set it, so it never appears in a URL here.

import {
  Captions, Status, describe, describeResponse, streamTime, takeToken, tokenForm,
} from "./live.js";

const READ_SCOPE = "This token may not read transcripts: it needs transcription:read (its own sessions) or transcripts:read (every session).";
const FILE_TYPES = { text: ["txt", "text/plain"], vtt: ["vtt", "text/vtt"] };

const status = new Status(document.getElementById("status"));
const rows = document.querySelector("#sessions tbody");
const section = document.getElementById("transcript");
const title = document.getElementById("transcript-title");
const lines = new Captions(document.getElementById("transcript-lines"), { maxLines: 100000 });
const openTokenForm = tokenForm(() => load());
let shown = null; // the session id on display

async function get(path, token) {
  return fetch(path, { headers: { Authorization: `Bearer ${token}` }, cache: "no-store" });
}

/** The token, or null after saying what is missing or wrong. */
function tokenOrSay() {
  const token = takeToken();
  if (!token) {
    status.set(describe("missing_token"), "bad");
    openTokenForm();
  }
  return token;
}

async function refused(response) {
  const words = await describeResponse(response, READ_SCOPE);
  status.set(words, "bad");
  if (response.status === 401 || response.status === 403) openTokenForm();
}

async function load() {
  const token = tokenOrSay();
  if (!token) return;
  status.set("Loading…", "wait");
  let response;
  try {
    response = await get("/api/transcripts", token);
  } catch {
    status.set("The device cannot be reached.", "bad");
    return;
  }
  if (!response.ok) {
    await refused(response);
    return;
  }
  const { sessions } = await response.json();
  rows.replaceChildren(...sessions.map(row));
  status.set(sessions.length ? `${sessions.length} session${sessions.length === 1 ? "" : "s"}`
    : "No finished sessions that this token may read.", "ok");
  const wanted = new URLSearchParams(location.hash.slice(1)).get("session");
  if (wanted && wanted !== shown) show(wanted);
}

function cell(text) {
  const td = document.createElement("td");
  td.textContent = text;
  return td;
}

/** A language tag as a reader knows it ("Korean (ko)"), the tag alone if the browser
 * cannot name it, "" when the session's language is not known. */
function languageName(tag) {
  if (!tag) return "";
  try {
    const name = new Intl.DisplayNames([navigator.language, "en"], { type: "language" }).of(tag);
    return name && name !== tag ? `${name} (${tag})` : tag;
  } catch {
    return tag; // not a tag Intl accepts
  }
}

function row(session) {
  const tr = document.createElement("tr");
  tr.dataset.session = session.session_id;
  const started = new Date(session.started_at * 1000);
  const seconds = Math.max(0, (session.ended_at ?? session.started_at) - session.started_at);
  const source = session.source === "room" ? "room microphone"
    : session.source === "relay" ? `relayed from ${session.device_id}` : "client";
  tr.append(
    cell(started.toLocaleString()), cell(streamTime(seconds * 1000)), cell(source),
    cell(languageName(session.language)), cell(session.sub ?? ""),
    cell(String(session.finals ?? "")), cell(session.end_reason ?? ""),
  );
  const actions = document.createElement("td");
  const open = document.createElement("button");
  open.type = "button";
  open.textContent = "Show";
  open.addEventListener("click", () => show(session.session_id));
  actions.append(open);
  tr.append(actions);
  return tr;
}

async function show(sessionId) {
  const token = tokenOrSay();
  if (!token) return;
  const response = await get(`/transcripts/${encodeURIComponent(sessionId)}?format=json`, token);
  if (!response.ok) {
    await refused(response);
    return;
  }
  const { session, finals } = await response.json();
  shown = sessionId;
  history.replaceState(null, "", `#session=${encodeURIComponent(sessionId)}`);
  const count = `${session.finals} line${session.finals === 1 ? "" : "s"}`;
  const language = languageName(session.language);
  title.textContent = [new Date(session.started_at * 1000).toLocaleString(), count, language]
    .filter(Boolean).join(" · ");
  // The lines are in the session's language: screen readers and fonts follow it.
  lines.log.lang = session.language ?? "";
  lines.clear();
  for (const final of finals) lines.addFinal(final, streamTime(final.start_ms));
  section.hidden = false;
  for (const tr of rows.children) tr.classList.toggle("selected", tr.dataset.session === sessionId);
}

async function download(format) {
  const token = tokenOrSay();
  if (!token || shown === null) return;
  const response = await get(`/transcripts/${encodeURIComponent(shown)}?format=${format}`, token);
  if (!response.ok) {
    await refused(response);
    return;
  }
  const [extension, type] = FILE_TYPES[format];
  const blob = new Blob([await response.text()], { type: `${type};charset=utf-8` });
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = `transcript-${shown}.${extension}`;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
}

document.getElementById("refresh").addEventListener("click", () => load());
document.getElementById("download-text").addEventListener("click", () => download("text"));
document.getElementById("download-vtt").addEventListener("click", () => download("vtt"));
load();
