// AssemblyAI's own npm SDK (assemblyai 4.41.5), used as its README shows, against edge:
// a temporary token from GET /v3/token (with the device's JWT as the API key), then a
// streaming session with that token over wss://, the recording sent in 100 ms chunks,
// and close() waiting for Termination.
//
//   node assemblyai_client.js https://127.0.0.1:PORT DEVICE_JWT file.wav
//
// Prints one JSON line per event: {"token": "..."}, {"begin": ...}, {"turn": ...},
// {"frame": "<every text frame as received>"}, {"error": "..."}, then {"done": true}.
// NODE_EXTRA_CA_CERTS points Node at the test CA.
"use strict";

const fs = require("fs");
const { AssemblyAI } = require("assemblyai");

function print(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

function pcmOf(path) {
  const wav = fs.readFileSync(path);
  // The fixture is a plain 44-byte-header PCM WAV; find the "data" chunk to be sure.
  let pos = 12;
  while (pos + 8 <= wav.length) {
    const id = wav.toString("ascii", pos, pos + 4);
    const size = wav.readUInt32LE(pos + 4);
    if (id === "data") return { rate: wav.readUInt32LE(24), pcm: wav.subarray(pos + 8, pos + 8 + size) };
    pos += 8 + size + (size & 1);
  }
  throw new Error("no data chunk");
}

async function main() {
  const [baseUrl, apiKey, wavPath] = process.argv.slice(2);
  const client = new AssemblyAI({ apiKey, baseUrl, streamingBaseUrl: baseUrl });
  const token = await client.streaming.createTemporaryToken({ expires_in_seconds: 60 });
  print({ token });

  const { rate, pcm } = pcmOf(wavPath);
  const wsUrl = new URL("/v3/ws", baseUrl.replace(/^https:/, "wss:")).toString();
  const transcriber = client.streaming.transcriber({
    token,
    websocketBaseUrl: wsUrl,
    sampleRate: rate,
    formatTurns: true,
  });
  transcriber.on("turn", (turn) => print({ turn }));
  transcriber.on("error", (error) => print({ error: String(error && error.message) }));
  const begin = await transcriber.connect();
  print({ begin });
  transcriber.socket.addEventListener("message", (event) => print({ frame: String(event.data) }));

  const chunk = (rate * 2) / 10;
  for (let i = 0; i < pcm.length; i += chunk) {
    transcriber.sendAudio(pcm.subarray(i, i + chunk));
  }
  await transcriber.close(true, 30000);
  print({ done: true });
}

main().catch((error) => {
  print({ error: String(error && error.message), code: error && error.code,
          cause: String(error && error.cause) });
  process.exitCode = 1;
});
