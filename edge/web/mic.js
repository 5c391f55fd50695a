// My microphone: Start streams this browser's microphone to the Live API (an
// AudioWorklet makes 100 ms frames of 16 kHz mono s16le) and shows the session's
// captions; Stop sends "end" and shows the last final and where the transcript is.

import {
  Captions, Status, TOKEN_PROBLEMS, clockTime, describe, liveUrl, notice, parseMessage,
  takeToken, tokenForm,
} from "./live.js";

const WRITE_SCOPE = "This token may not stream audio: it needs the transcription:write scope (and transcription:read to see the captions).";
const MAX_QUEUED_FRAMES = 50; // 5 s of audio while the connection opens

const button = document.getElementById("mic-button");
const status = new Status(document.getElementById("status"));
const captions = new Captions(document.getElementById("captions"));
const ended = document.getElementById("ended");
const openTokenForm = tokenForm(() => status.set("Token stored. Press Start.", "ok"));

let capture = null; // {stream, context, source, node}
let socket = null;

function secureContextHelp() {
  const port = location.port ? `:${location.port}` : "";
  return "Browsers let a page use the microphone only over HTTPS or on the computer itself. "
    + `This page came over plain HTTP from another machine: set server.tls_cert and server.tls_key on the device and open https://${location.hostname}${port}/mic, `
    + `or open http://localhost${port}/mic on the device itself.`;
}

async function openCapture() {
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
  });
  let context = new AudioContext({ sampleRate: 16000 });
  let source;
  try {
    source = context.createMediaStreamSource(stream);
  } catch {
    // A browser that cannot resample a microphone into a 16 kHz context: use the
    // microphone's own rate and let the device resample (?sample_rate= says which).
    await context.close();
    context = new AudioContext();
    source = context.createMediaStreamSource(stream);
  }
  await context.audioWorklet.addModule("/static/pcm-worklet.js");
  const node = new AudioWorkletNode(context, "pcm-s16le", {
    numberOfInputs: 1, numberOfOutputs: 0,
    processorOptions: { frameSamples: Math.round(context.sampleRate / 10) },
  });
  source.connect(node);
  // The source is kept too: Chromium may collect an unreferenced MediaStream source,
  // and the audio would stop.
  return { stream, context, source, node };
}

function closeCapture() {
  if (!capture) return;
  capture.node.port.onmessage = null;
  capture.source.disconnect();
  capture.node.disconnect();
  capture.stream.getTracks().forEach((track) => track.stop());
  capture.context.close();
  capture = null;
}

async function start() {
  const token = takeToken();
  if (!token) {
    status.set(describe("missing_token"), "bad");
    openTokenForm();
    return;
  }
  button.disabled = true;
  ended.hidden = true;
  status.set("Opening the microphone…", "wait");
  try {
    capture = await openCapture();
  } catch (error) {
    closeCapture();
    button.disabled = false;
    status.set(error?.name === "NotAllowedError"
      ? "The browser was not allowed to use the microphone: allow it (the icon in the address bar) and press Start again."
      : error?.name === "NotFoundError" ? "This computer has no microphone the browser can use."
        : `The microphone could not be opened (${error?.name ?? error}).`, "bad");
    return;
  }
  const ws = new WebSocket(liveUrl({ sample_rate: String(capture.context.sampleRate) }, token));
  ws.binaryType = "arraybuffer";
  socket = ws;
  const queued = [];
  let error = null;
  let sessionId = null;
  let summary = null;
  capture.node.port.onmessage = (event) => {
    if (ws.readyState === WebSocket.OPEN && sessionId !== null) {
      ws.send(event.data);
    } else if (ws.readyState === WebSocket.CONNECTING && queued.length < MAX_QUEUED_FRAMES) {
      queued.push(event.data);
    }
  };
  ws.addEventListener("message", (event) => {
    const message = parseMessage(event.data);
    if (message === null) return;
    if (message.type === "session_init") {
      sessionId = message.session_id;
      for (const frame of queued.splice(0)) ws.send(frame);
      button.textContent = "Stop";
      button.disabled = false;
      status.set(message.transcripts === false
        ? "Streaming, but this token may not read transcripts: no captions will show."
        : "Listening to your microphone", message.transcripts === false ? "warn" : "ok");
    } else if (message.type === "transcription") {
      if (message.is_final) captions.addFinal(message, clockTime());
      else captions.showPartial(message.text);
    } else if (message.type === "warning") {
      status.note(notice(message.code));
    } else if (message.type === "error") {
      error = message;
    } else if (message.type === "session_end") {
      summary = message;
    }
  });
  ws.addEventListener("close", (event) => {
    if (socket === ws) socket = null;
    closeCapture();
    captions.clearPartial();
    button.textContent = "Start";
    button.disabled = false;
    if (error && TOKEN_PROBLEMS.has(error.code)) {
      status.set(describe(error.code, WRITE_SCOPE), "bad");
      openTokenForm();
    } else if (error) {
      status.set(`${describe(error.code)} Press Start to begin a new session.`, "bad");
    } else if (summary) {
      status.set(`Stopped: ${summary.finals} line${summary.finals === 1 ? "" : "s"} transcribed.`, "ok");
      showEnded(summary.session_id);
    } else {
      status.set(event.code === 1006
        ? "The connection to the device was lost. Press Start to begin a new session."
        : `The connection closed (${event.code}). Press Start to begin a new session.`, "bad");
    }
  });
}

function showEnded(sessionId) {
  const link = document.createElement("a");
  link.href = `/transcripts#session=${encodeURIComponent(sessionId)}`;
  link.textContent = "Open this session's transcript";
  ended.replaceChildren(link);
  ended.hidden = false;
}

function stop() {
  button.disabled = true;
  status.set("Finishing the last sentence…", "wait");
  closeCapture();
  if (socket?.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ type: "end" }));
  else socket?.close();
}

if (!window.isSecureContext || !navigator.mediaDevices?.getUserMedia) {
  button.disabled = true;
  status.set(secureContextHelp(), "bad");
} else {
  takeToken(); // store a #token= fragment at once, and take it out of the address bar
  button.addEventListener("click", () => (socket ? stop() : start()));
}
