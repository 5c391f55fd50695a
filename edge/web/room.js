// Room captions: listens to the room microphone (?source=room), reconnects by itself
// with exponential backoff and resumes with since_seq, so a dropped connection or a
// restarted daemon leaves neither a gap nor a duplicate line.

import {
  Captions, Status, TOKEN_PROBLEMS, backoff, clockTime, describe, liveUrl, notice,
  parseMessage, streamTime, takeToken, tokenForm,
} from "./live.js";

const READ_SCOPE = "This token may not listen to the room: it needs the transcription:read scope.";
const STATES = {
  starting: ["The room microphone is starting…", "wait"],
  listening: ["Listening to the room", "ok"],
  paused: ["The room microphone is paused: nothing is being captured", "warn"],
  mic_lost: ["The room microphone is lost: check that it is plugged in. Retrying…", "bad"],
  restarting: ["The room's recogniser is restarting…", "warn"],
};

const status = new Status(document.getElementById("status"));
const captions = new Captions(document.getElementById("captions"));
const pauseButton = document.getElementById("pause");
const openTokenForm = tokenForm(() => restart());

let socket = null;
let roomId = null; // the room stream we follow; a new one after a daemon restart
let lastSeq = 0; // the last room seq shown (or skipped) of that stream
let attempt = 0;
let timer = null;
let roomState = null;

function restart() {
  clearTimeout(timer);
  attempt = 0;
  connect();
}

function connect() {
  const token = takeToken();
  if (!token) {
    status.set(describe("missing_token"), "bad");
    openTokenForm();
    return;
  }
  const ws = new WebSocket(liveUrl({ source: "room", since_seq: String(lastSeq) }, token));
  const previous = socket;
  socket = ws;
  if (previous) previous.close(1000);
  let error = null; // the error message the server sent before closing
  let replayedUpTo = 0; // seqs up to this were said before we connected
  status.set(roomId === null ? "Connecting…" : "Reconnecting…", "wait");

  ws.addEventListener("message", (event) => {
    if (ws !== socket) return;
    const message = parseMessage(event.data);
    if (message === null) return;
    if (message.type === "session_init") {
      if (roomId !== null && message.room_id !== roomId) {
        // A new room stream (the daemon restarted): our since_seq counted the old one.
        // Start again from the new stream's beginning; everything shown stays.
        roomId = message.room_id;
        lastSeq = 0;
        connect();
        return;
      }
      roomId = message.room_id;
      replayedUpTo = Number(message.last_seq) || 0;
      attempt = 0;
      setState(message.state);
      pauseButton.hidden = !message.can_pause;
      return;
    }
    if (message.room_id !== undefined && message.room_id !== roomId) return;
    if (typeof message.seq === "number") {
      if (message.seq <= lastSeq) return; // already shown
      lastSeq = message.seq;
    }
    switch (message.type) {
      case "transcription":
        if (message.is_final) {
          const time = message.seq <= replayedUpTo ? streamTime(message.start_ms) : clockTime();
          captions.addFinal(message, time);
        } else {
          captions.showPartial(message.text);
        }
        break;
      case "room_state":
        setState(message.state);
        break;
      case "warning":
        onWarning(message);
        break;
      case "error":
        error = message;
        break;
      default:
        break;
    }
  });

  ws.addEventListener("close", (event) => {
    if (ws !== socket) return;
    captions.clearPartial();
    pauseButton.hidden = true;
    if (error && TOKEN_PROBLEMS.has(error.code)) {
      status.set(describe(error.code, READ_SCOPE), "bad");
      openTokenForm();
      return;
    }
    const why = error ? describe(error.code) : event.code === 1006
      ? "The connection to the device was lost." : `The connection closed (${event.code}).`;
    const delay = error?.code === "no_room" ? 15000 : backoff(attempt++);
    status.set(`${why} Reconnecting in ${Math.ceil(delay / 1000)} s…`,
      error?.code === "no_room" ? "bad" : "wait");
    timer = setTimeout(connect, delay);
  });
}

function setState(state) {
  roomState = state;
  const [text, kind] = STATES[state] ?? [`The room microphone is ${state}.`, "warn"];
  status.set(text, kind);
  pauseButton.textContent = state === "paused" ? "Resume the microphone" : "Pause the microphone";
}

function onWarning(message) {
  if (message.code === "missed_messages") {
    const lost = Number(message.lost) || 0;
    status.note(`${lost} earlier line${lost === 1 ? " is" : "s are"} no longer kept by the device and cannot be shown.`);
  } else if (message.code === "stream_reset") {
    status.note("The room stream was restarted.");
  } else {
    status.note(message.code === "insufficient_scope"
      ? "Pausing the room needs the transcription:write scope." : notice(message.code));
  }
}

pauseButton.addEventListener("click", () => {
  if (socket?.readyState === WebSocket.OPEN) {
    socket.send(JSON.stringify({ type: roomState === "paused" ? "resume" : "pause" }));
  }
});

connect();
