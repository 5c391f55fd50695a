'use strict';
/*
 * The Live API documentation's connection handler, `LiveAPIConnection`, run under Node
 * with the `ws` package against a real server.
 *
 *   node live_api_client.js URL WAV_FILE [--token JWT] [--fast]
 *
 * The token comes from --token or $EDGE_TOKEN and is sent as `Authorization: Bearer`,
 * as the documentation's example does. On open the client streams WAV_FILE in 100 ms
 * chunks (the first one carries the 44-byte header) paced in real time, or as fast as
 * the socket takes them with --fast, then sends {"type":"end"}.
 *
 * stdout carries JSON lines only: every server message as received, then
 * {"close": code} when the connection closes. A handshake the server refuses with an
 * HTTP status prints {"unexpected_response": {"status": ..., "headers": ..., "body": ...}}.
 * Exit status: 0 when the close code was 1000, 1 otherwise, 2 for bad usage.
 * Diagnostics go to stderr.
 */

const fs = require('fs');
const WebSocket = require('ws');

const CHUNK_MS = 100;
const WAV_HEADER_BYTES = 44;

function printJson(value) {
  process.stdout.write(JSON.stringify(value) + '\n');
}

class LiveAPIConnection {
  constructor(jwtToken, url = 'ws://localhost:8000/ws/transcribe') {
    this.token = jwtToken;
    this.url = url;
    this.ws = null;
    this.sessionId = null;
    this.reconnectAttempts = 0;
    this.maxReconnectAttempts = 5;
  }

  connect() {
    try {
      this.ws = new WebSocket(this.url, [], {
        headers: {
          'Authorization': `Bearer ${this.token}`
        }
      });

      this.ws.onopen = this.handleOpen.bind(this);
      this.ws.onmessage = this.handleMessage.bind(this);
      this.ws.onclose = this.handleClose.bind(this);
      this.ws.onerror = this.handleError.bind(this);
      // Node only: a browser never sees the status of a refused handshake.
      this.ws.on('unexpected-response', this.handleUnexpectedResponse.bind(this));
    } catch (error) {
      console.error('Connection failed:', error);
    }
  }

  handleOpen() {
    console.error('Connected to Live API');
    this.reconnectAttempts = 0;
    this.onOpen();
  }

  handleMessage(event) {
    const message = JSON.parse(event.data);
    printJson(message);

    switch (message.type) {
      case 'session_init':
        this.sessionId = message.session_id;
        console.error('Session ID:', this.sessionId);
        this.onSessionInit(message);
        break;
      case 'transcription':
        this.onTranscription(message);
        break;
      case 'warning':
        this.onWarning(message);
        break;
    }
  }

  handleClose(event) {
    console.error('Connection closed:', event.code, event.reason);
    printJson({ close: event.code });

    if (event.code === 1002) { // Protocol error (auth failed)
      console.error('Authentication failed - check your JWT token');
    }
    if (event.code === 1006 && this.reconnectAttempts < this.maxReconnectAttempts) {
      this.reconnect();
      return;
    }
    process.exitCode = event.code === 1000 ? 0 : 1;
  }

  handleError(error) {
    console.error('WebSocket error:', error.message || error);
  }

  handleUnexpectedResponse(request, response) {
    const chunks = [];
    response.on('data', (chunk) => chunks.push(chunk));
    response.on('end', () => {
      const text = Buffer.concat(chunks).toString('utf8');
      let body = text;
      try {
        body = JSON.parse(text);
      } catch (error) {
        // not JSON: report the text as it came
      }
      printJson({
        unexpected_response: {
          status: response.statusCode,
          headers: response.headers,
          body: body
        }
      });
      process.exit(1);
    });
  }

  reconnect() {
    this.reconnectAttempts++;
    const delay = Math.pow(2, this.reconnectAttempts) * 1000; // Exponential backoff

    console.error(`Reconnecting in ${delay}ms (attempt ${this.reconnectAttempts})`);

    setTimeout(() => {
      this.connect();
    }, delay);
  }

  sendAudio(audioBuffer) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(audioBuffer);
    }
  }

  disconnect() {
    if (this.ws) {
      this.ws.close();
    }
  }

  // Override these methods in your implementation
  onOpen() {
    // Start streaming audio
  }

  onSessionInit(message) {
    // Handle session initialization
  }

  onTranscription(message) {
    // Handle transcription results
  }

  onWarning(message) {
    // Handle warnings
  }
}

class WavFileStreamer extends LiveAPIConnection {
  constructor(jwtToken, url, audio, realtime) {
    super(jwtToken, url);
    this.audio = audio;
    this.realtime = realtime;
  }

  onOpen() {
    const byteRate = this.audio.readUInt32LE(28); // the WAV header's bytes per second
    const chunkBytes = Math.max(2, Math.floor(byteRate * CHUNK_MS / 1000 / 2) * 2);
    const chunks = [];
    let offset = 0;
    while (offset < this.audio.length) {
      const size = chunkBytes + (offset === 0 ? WAV_HEADER_BYTES : 0);
      chunks.push(this.audio.subarray(offset, offset + size));
      offset += size;
    }
    const ws = this.ws;
    const started = Date.now();
    let index = 0;
    const next = () => {
      if (ws !== this.ws || ws.readyState !== WebSocket.OPEN) {
        return;
      }
      if (index === chunks.length) {
        ws.send(JSON.stringify({ type: 'end' }));
        return;
      }
      this.sendAudio(chunks[index]);
      index++;
      if (this.realtime) {
        setTimeout(next, Math.max(0, started + index * CHUNK_MS - Date.now()));
      } else {
        setImmediate(next);
      }
    };
    next();
  }
}

function main(argv) {
  const positional = [];
  let token = process.env.EDGE_TOKEN;
  let realtime = true;
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--token') {
      token = argv[++i];
    } else if (argv[i] === '--fast') {
      realtime = false;
    } else {
      positional.push(argv[i]);
    }
  }
  if (positional.length !== 2 || !token) {
    console.error('usage: node live_api_client.js URL WAV_FILE [--token JWT | $EDGE_TOKEN] ' +
                  '[--fast]');
    process.exitCode = 2;
    return;
  }
  const [url, file] = positional;
  const audio = fs.readFileSync(file);
  if (audio.length < WAV_HEADER_BYTES || audio.toString('latin1', 0, 4) !== 'RIFF') {
    console.error(`${file} is not a WAV file`);
    process.exitCode = 2;
    return;
  }
  const connection = new WavFileStreamer(token, url, audio, realtime);
  connection.connect();
}

main(process.argv.slice(2));
