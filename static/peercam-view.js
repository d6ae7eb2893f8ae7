// <peercam-view>: one element that connects to peercam's /ws and shows the camera.
// WebRTC first; JPEG pictures over the same socket when WebRTC is missing or fails.
// Protocol: docs/protocol.md. No build step: a plain ES module.

const RECONNECT_MIN_MS = 500;
const RECONNECT_MAX_MS = 10000;
const STATS_INTERVAL_MS = 1000;
// Every this many overlay updates the page tells the server what it sees (/metrics).
const REPORT_EVERY_STATS = 5;
// Errors in reply to these are logged, never shown: the picture is not affected.
const QUIET_REPLIES = new Set(["candidate", "viewer-stats"]);
const DEFAULT_FALLBACK_S = 5;
// After the first frame: no new frame for this long is a stall (never "playing" over a frozen
// picture): ask for a keyframe; still none later: renegotiate; then fall back to JPEG.
const STALL_MS = 2000;
const RENEGOTIATE_MS = 5000;
const WATCH_INTERVAL_MS = 500;
// A fallback the network caused (not the browser or the server's choice) retries WebRTC later.
const WEBRTC_RETRY_S = 30;
const WEBRTC_RETRY_MAX_S = 300;
const NETWORK_REASONS = new Set(["failed", "no-video", "stalled"]);
// Fallback reasons are a fixed set (docs/protocol.md, counted by the server): an offer refused
// with one of these error codes falls back with the code as its reason, any other refusal
// with "offer-error".
const OFFER_REFUSALS = new Set(["webrtc-disabled", "no-codec", "no-udp-port"]);
const JPEG_HEADER_BYTES = 20; // "PCJ1", seq u32, capture time f64 (s), width u16, height u16
// Close codes of a refused socket (docs/protocol.md): the reason says what to change, so it is
// shown as it is and retried only slowly.
const REFUSED_CLOSE_CODES = new Set([4401, 4403, 4421]);

const TEMPLATE = `
<style>
  :host { display: block; position: relative; background: #000; overflow: hidden;
          contain: strict; }
  video, canvas { position: absolute; inset: 0; width: 100%; height: 100%;
                  object-fit: contain; background: transparent; }
  [hidden] { display: none !important; }
  .overlay { position: absolute; left: max(8px, env(safe-area-inset-left));
             bottom: max(8px, env(safe-area-inset-bottom)); padding: 4px 8px; border-radius: 4px;
             background: rgba(0, 0, 0, 0.55); color: #fff;
             font: 13px/1.4 system-ui, -apple-system, sans-serif;
             pointer-events: none; white-space: pre;
             overflow: hidden; text-overflow: ellipsis; max-width: calc(100% - 80px); }
  .overlay.error { background: rgba(160, 0, 0, 0.75); }
  button { font: 600 15px/1 system-ui, -apple-system, sans-serif; color: #fff;
           background: rgba(0, 0, 0, 0.55); border: 1px solid rgba(255, 255, 255, 0.4);
           border-radius: 6px; min-width: 44px; min-height: 44px; padding: 0 12px;
           cursor: pointer; touch-action: manipulation; display: grid; place-items: center; }
  .fullscreen { position: absolute; right: max(8px, env(safe-area-inset-right));
                bottom: max(8px, env(safe-area-inset-bottom)); }
  .play { position: absolute; left: 50%; top: 50%; transform: translate(-50%, -50%);
          font-size: 18px; padding: 0 20px; min-height: 56px; }
</style>
<video autoplay muted playsinline disablepictureinpicture></video>
<canvas hidden></canvas>
<div class="overlay" part="overlay">connecting…</div>
<button class="play" part="play" hidden>Tap to play</button>
<button class="fullscreen" part="fullscreen" title="Full screen" aria-label="Full screen">
  <svg width="20" height="20" viewBox="0 0 20 20" fill="none" stroke="currentColor"
       stroke-width="2" aria-hidden="true"><path d="M2 7V2h5M13 2h5v5M18 13v5h-5M7 18H2v-5"/></svg>
</button>
`;

function log(...args) {
  console.debug("[peercam]", ...args);
}

function sortCodecs(codecs, wanted) {
  // The wanted codec first (for H.264, constrained baseline packetization-mode 1 first);
  // the others stay, so a server that refuses the wanted one can still answer.
  const score = (c) => {
    const mime = c.mimeType.toLowerCase();
    if (mime !== `video/${wanted}`) return 2;
    if (wanted === "h264") {
      const fmtp = c.sdpFmtpLine || "";
      return fmtp.includes("profile-level-id=42e01f") && fmtp.includes("packetization-mode=1")
        ? 0 : 1;
    }
    return 0;
  };
  return [...codecs].sort((a, b) => score(a) - score(b));
}

const REASON_TEXT = {
  "no-webrtc": "this browser has no WebRTC",
  "webrtc-disabled": "the server serves JPEG only",
  "offer-error": "the server refused WebRTC",
  "no-codec": "no video codec in common with the server",
  "no-udp-port": "every UDP port of the server is in use",
  stalled: "the WebRTC picture froze",
  failed: "the WebRTC connection failed",
  "no-video": "no WebRTC video in time",
  forced: "asked for by ?mode=jpeg",
};

class PeercamView extends HTMLElement {
  #ws = null;
  #pc = null;
  #video;
  #canvas;
  #overlay;
  #retryMs = RECONNECT_MIN_MS;
  #retryTimer = null;
  #statsTimer = null;
  #fallbackTimer = null;
  #watchTimer = null;
  #webrtcRetryTimer = null;
  #webrtcRetryS = null;
  #tryWebRTC = false; // this connection retries WebRTC after a network-caused fallback
  #config = null;
  #lastFrameAt = 0;
  #stall = { keyframe: false, renegotiated: false };
  #running = false;
  #fallbackReason = null; // once WebRTC has failed here, reconnects go straight to JPEG
  #info = { mode: "—", codec: "—", state: "connecting", fps: 0, latencyMs: null, error: "",
            fallbackReason: null, framesDrawn: 0, rung: null, stalls: 0, renegotiations: 0 };
  #lastCount = { frames: 0, at: 0 };
  #report = { polls: 0, stalls: 0 }; // viewer-stats: polls since the last one, stalls reported
  #jpeg = { busy: false, pending: null };
  #wakeLock = null;
  #playButton;
  #onVisibility = () => (document.hidden ? this.#stop() : this.#start());

  constructor() {
    super();
    const root = this.attachShadow({ mode: "open" });
    root.innerHTML = TEMPLATE;
    this.#video = root.querySelector("video");
    this.#canvas = root.querySelector("canvas");
    this.#overlay = root.querySelector(".overlay");
    this.#playButton = root.querySelector(".play");
    this.#video.addEventListener("resize", () => this.#render());
    // Autoplay refused (power saving, an old browser): one tap starts it.
    this.#playButton.addEventListener("click", () => {
      this.#playButton.hidden = true;
      this.#video.play().catch((e) => log("play refused", e));
    });
    root.querySelector(".fullscreen").addEventListener("click", () => this.#toggleFullscreen());
  }

  /** The WebSocket URL: the `src` attribute, or `ws` next to this page. Relative, so the page
   *  works under any path prefix a reverse proxy serves it at (/cam/ → /cam/ws). */
  get url() {
    return new URL(this.getAttribute("src") || "ws", location.href).href.replace(/^http/, "ws");
  }

  #param(name) {
    return this.getAttribute(name) ?? new URLSearchParams(location.search).get(name);
  }

  /** The codec to prefer: the `codec` attribute, else the page's ?codec= parameter. */
  get preferredCodec() {
    const value = this.#param("codec");
    return value === "vp8" || value === "h264" ? value : null;
  }

  /** A forced mode ("webrtc" or "jpeg"): the `mode` attribute or ?mode=; null for automatic. */
  get forcedMode() {
    const value = this.#param("mode");
    return value === "webrtc" || value === "jpeg" ? value : null;
  }

  /** Seconds WebRTC has to show a frame before the element falls back to JPEG. */
  get fallbackAfter() {
    const value = Number(this.#param("fallback-after"));
    return value > 0 ? value : DEFAULT_FALLBACK_S;
  }

  /** Seconds before WebRTC is tried again after a network-caused fallback (doubles). */
  get webrtcRetryAfter() {
    const value = Number(this.#param("webrtc-retry"));
    return value > 0 ? value : WEBRTC_RETRY_S;
  }

  /** Ask for ICE relays only (?relay=1): diagnoses whether TURN works from this network. */
  get relayOnly() {
    const value = this.#param("relay");
    return value === "1" || value === "true";
  }

  /** For diagnostics and tests. */
  get peerConnection() { return this.#pc; }
  get video() { return this.#video; }
  get canvas() { return this.#canvas; }
  get info() { return { ...this.#info }; }

  connectedCallback() {
    document.addEventListener("visibilitychange", this.#onVisibility);
    if (!document.hidden) this.#start();
  }

  disconnectedCallback() {
    document.removeEventListener("visibilitychange", this.#onVisibility);
    this.#stop();
  }

  #start() {
    if (this.#running) return;
    this.#running = true;
    this.#connect();
    this.#statsTimer = setInterval(() => this.#pollStats(), STATS_INTERVAL_MS);
  }

  #stop() {
    this.#running = false;
    clearTimeout(this.#retryTimer);
    clearInterval(this.#statsTimer);
    clearTimeout(this.#webrtcRetryTimer);
    this.#retryTimer = this.#statsTimer = this.#webrtcRetryTimer = null;
    this.#teardown("bye");
    this.#releaseWakeLock();
  }

  #teardown(reason) {
    clearTimeout(this.#fallbackTimer);
    const ws = this.#ws;
    this.#ws = null;
    if (ws) {
      ws.onclose = ws.onmessage = ws.onerror = null;
      if (ws.readyState === WebSocket.OPEN) {
        if (reason === "bye") ws.send(JSON.stringify({ type: "bye" }));
        ws.close();
      }
    }
    this.#closePeer();
  }

  #closePeer() {
    clearTimeout(this.#fallbackTimer);
    clearInterval(this.#watchTimer);
    this.#watchTimer = null;
    if (this.#pc) {
      this.#pc.close();
      this.#pc = null;
    }
  }

  #set(values) {
    Object.assign(this.#info, values);
    this.dataset.state = this.#info.state;
    this.dataset.mode = this.#info.mode;
    this.#render();
  }

  #render() {
    const i = this.#info;
    let size = "—";
    if (i.mode === "JPEG" && this.#canvas.width && i.framesDrawn) {
      size = `${this.#canvas.width}×${this.#canvas.height}`;
    } else if (this.#video.videoWidth) {
      size = `${this.#video.videoWidth}×${this.#video.videoHeight}`;
    }
    const codec = i.mode === "JPEG" ? "" : ` · ${i.codec}`;
    let line = `${i.mode}${codec} · ${size} · ${i.fps.toFixed(0)} fps`;
    if (i.latencyMs !== null) line += ` · ${Math.round(i.latencyMs)} ms`;
    const lines = [line];
    if (i.mode === "WebRTC" && i.rung && i.rung.count > 1) {
      // Which shared encoding this viewer's link gets: 1 is the best.
      const kbit = Math.round(i.rung.bitrate / 1000);
      const rungSize = i.rung.width ? ` · ${i.rung.width}×${i.rung.height}` : "";
      lines.push(`rung ${i.rung.index + 1}/${i.rung.count}${rungSize} · ${kbit} kbit/s`);
    }
    if (i.fallbackReason) lines.push(`fallback: ${REASON_TEXT[i.fallbackReason] || i.fallbackReason}`);
    if (i.state !== "playing") lines.push(i.error || i.state);
    this.#overlay.textContent = lines.join("\n");
    this.#overlay.classList.toggle("error", Boolean(i.error) && i.state !== "playing");
  }

  #connect() {
    this.#set({ state: "connecting", error: "" });
    const ws = new WebSocket(this.url);
    ws.binaryType = "arraybuffer";
    this.#ws = ws;
    ws.onmessage = (event) => this.#onMessage(event);
    ws.onclose = (event) => {
      log("socket closed", event.code, event.reason);
      this.#teardown();
      if (REFUSED_CLOSE_CODES.has(event.code)) {
        // No valid token, a foreign origin, a Host not served: say so plainly; retrying soon
        // would not help.
        this.#retryMs = RECONNECT_MAX_MS;
        this.#set({ error: event.reason || "unauthorized" });
      }
      this.#scheduleReconnect(event.reason || "connection lost");
    };
    ws.onerror = () => log("socket error");
  }

  #scheduleReconnect(why) {
    if (!this.#running) return;
    this.#set({ state: `reconnecting (${why})`, fps: 0 });
    clearTimeout(this.#retryTimer);
    // Jitter spreads the reconnects of many viewers after a server restart.
    const delay = this.#retryMs * (0.75 + Math.random() * 0.5);
    this.#retryMs = Math.min(RECONNECT_MAX_MS, this.#retryMs * 2);
    this.#retryTimer = setTimeout(() => this.#connect(), delay);
  }

  #send(message) {
    if (this.#ws && this.#ws.readyState === WebSocket.OPEN) {
      this.#ws.send(JSON.stringify(message));
    }
  }

  async #onMessage(event) {
    if (typeof event.data !== "string") {
      this.#onPicture(event.data);
      return;
    }
    let msg;
    try {
      msg = JSON.parse(event.data);
    } catch {
      log("ignoring a message that is not JSON");
      return;
    }
    log("<", msg.type);
    switch (msg.type) {
      case "config":
        this.#onConfig(msg);
        break;
      case "answer":
        this.#set({ codec: (msg.codec || "").toUpperCase() });
        if (this.#pc) await this.#pc.setRemoteDescription({ type: "answer", sdp: msg.sdp });
        break;
      case "error":
        log("server error", msg.code, msg.message);
        if (msg.inReplyTo === "offer" && this.#info.mode === "WebRTC") {
          const reason = OFFER_REFUSALS.has(msg.code) ? msg.code : "offer-error";
          this.#fallBack(reason, `${msg.code}: ${msg.message}`);
        } else if (!QUIET_REPLIES.has(msg.inReplyTo) && this.#info.state !== "failed") {
          // A refused candidate (an mDNS name, say) or report is not fatal: logged, not shown.
          this.#set({ error: `${msg.code}: ${msg.message}` });
        }
        break;
      case "rung":
        this.#set({ rung: { index: msg.index, count: msg.count, width: msg.width,
                            height: msg.height, bitrate: msg.bitrate } });
        this.dataset.rung = String(msg.index);
        break;
      case "bye":
        log("server said bye:", msg.reason);
        // The server gave up on a WebRTC session that never played (ICE found no path):
        // the reconnect goes straight to JPEG instead of trying the same thing forever.
        if (this.#info.mode === "WebRTC" && this.#info.state !== "playing" &&
            this.forcedMode !== "webrtc") {
          this.#fallbackReason = "failed";
        }
        break;
      default:
        log("ignoring message type", msg.type);
    }
  }

  #onConfig(config) {
    this.#config = config;
    const modes = config.modes || ["webrtc"];
    const forced = this.forcedMode;
    let reason = null;
    if (forced === "jpeg") reason = "forced";
    else if (!window.RTCPeerConnection) reason = "no-webrtc";
    else if (!modes.includes("webrtc")) reason = "webrtc-disabled";
    else if (forced !== "webrtc" && !this.#tryWebRTC) reason = this.#fallbackReason;
    this.#tryWebRTC = false;
    if (reason && forced !== "webrtc" && modes.includes("jpeg")) {
      this.#startJpeg(reason);
      return;
    }
    this.#showSnapshot();
    this.#startWebRTC(config).catch((e) => this.#fallBack("failed", String(e)));
  }

  // -- WebRTC --------------------------------------------------------------------------------

  async #startWebRTC(config) {
    if (!window.RTCPeerConnection) {
      this.#set({ mode: "none", error: "this browser cannot play WebRTC" });
      return;
    }
    const pc = new RTCPeerConnection({
      iceServers: config.iceServers || [],
      iceTransportPolicy: this.relayOnly ? "relay" : config.iceTransportPolicy || "all",
    });
    this.#pc = pc;
    this.#set({ mode: "WebRTC", codec: "—" });
    this.#video.hidden = false;
    const transceiver = pc.addTransceiver("video", { direction: "recvonly" });
    const wanted = this.preferredCodec;
    if (wanted && transceiver.setCodecPreferences && RTCRtpReceiver.getCapabilities) {
      const caps = RTCRtpReceiver.getCapabilities("video");
      if (caps) transceiver.setCodecPreferences(sortCodecs(caps.codecs, wanted));
    }
    pc.onicecandidate = ({ candidate }) => {
      this.#send(candidate
        ? { type: "candidate", candidate: candidate.candidate, sdpMid: candidate.sdpMid,
            sdpMLineIndex: candidate.sdpMLineIndex }
        : { type: "candidate", candidate: null });
    };
    pc.ontrack = ({ track, streams }) => {
      this.#video.srcObject = streams[0] || new MediaStream([track]);
      this.#video.play().catch((e) => {
        // Only a refusal asks for a tap; an AbortError just means the stream was replaced.
        if (e.name !== "NotAllowedError" || pc !== this.#pc) return;
        log("autoplay refused", e);
        this.#playButton.hidden = false;
      });
    };
    pc.onconnectionstatechange = () => {
      const state = pc.connectionState;
      log("connection", state);
      if (state === "connected") this.#retryMs = RECONNECT_MIN_MS;
      else if (state === "failed" && pc === this.#pc) this.#fallBack("failed", "WebRTC failed");
    };
    this.#awaitFirstVideoFrame(pc, this.#stall.renegotiated ? "stalled" : "no-video");
    const offer = await pc.createOffer();
    await pc.setLocalDescription(offer);
    this.#send({ type: "offer", sdp: pc.localDescription.sdp });
  }

  #awaitFirstVideoFrame(pc, reason) {
    const video = this.#video;
    clearTimeout(this.#fallbackTimer);
    this.#fallbackTimer = setTimeout(() => {
      if (pc === this.#pc) this.#fallBack(reason, "no WebRTC video in time");
    }, this.fallbackAfter * 1000);
    const onFrame = async () => {
      if (pc !== this.#pc) return;
      // A new stream can present a frame before anything is decoded (a renegotiation that
      // cannot connect): only decoded frames count.
      let decoded = 0;
      (await pc.getStats()).forEach((r) => {
        if (r.type === "inbound-rtp" && r.kind === "video") decoded = r.framesDecoded || 0;
      });
      if (pc !== this.#pc) return;
      if (!decoded) {
        if (video.requestVideoFrameCallback) video.requestVideoFrameCallback(onFrame);
        else video.addEventListener("playing", onFrame, { once: true });
        return;
      }
      // Frames decode (and WebRTC works) even while autoplay is refused: no fallback then,
      // but "playing" only once the video really plays, after the tap if one is needed.
      clearTimeout(this.#fallbackTimer);
      if (video.paused) {
        this.#set({ state: "tap to play" });
        video.addEventListener("playing", onFrame, { once: true });
        return;
      }
      this.#canvas.hidden = true;
      this.#playButton.hidden = true;
      // WebRTC works here again: the earlier fallback (if any) is history.
      this.#fallbackReason = null;
      this.#webrtcRetryS = null;
      this.#stall = { keyframe: false, renegotiated: false };
      this.#set({ state: "playing", error: "", fallbackReason: null });
      this.#keepAwake();
      this.#watchFrames(pc);
    };
    if (video.requestVideoFrameCallback) video.requestVideoFrameCallback(onFrame);
    else video.addEventListener("playing", onFrame, { once: true });
  }

  #watchFrames(pc) {
    // Every new frame is noted; a watchdog turns a frozen picture into "stalled".
    const video = this.#video;
    this.#lastFrameAt = performance.now();
    if (video.requestVideoFrameCallback) {
      const onFrame = () => {
        if (pc !== this.#pc) return;
        this.#lastFrameAt = performance.now();
        video.requestVideoFrameCallback(onFrame);
      };
      video.requestVideoFrameCallback(onFrame);
    }
    clearInterval(this.#watchTimer);
    this.#watchTimer = setInterval(() => this.#checkStall(pc), WATCH_INTERVAL_MS);
  }

  async #checkStall(pc) {
    if (pc !== this.#pc) return;
    if (!this.#video.requestVideoFrameCallback) {
      // No per-frame callback (older browsers): frames decoded, from the stats.
      let decoded = 0;
      (await pc.getStats()).forEach((r) => {
        if (r.type === "inbound-rtp" && r.kind === "video") decoded = r.framesDecoded || 0;
      });
      if (decoded !== this.#stall.decoded) this.#lastFrameAt = performance.now();
      this.#stall.decoded = decoded;
    }
    const gap = performance.now() - this.#lastFrameAt;
    if (gap < STALL_MS) {
      if (this.#info.state === "stalled") {
        this.#stall = { keyframe: false, renegotiated: this.#stall.renegotiated };
        this.#set({ state: "playing", error: "" });
      }
      return;
    }
    if (this.#info.state === "playing") {
      this.#info.stalls += 1;
      this.#set({ state: "stalled" });
    }
    if (!this.#stall.keyframe) {
      this.#stall.keyframe = true;
      this.#send({ type: "keyframe" });
    } else if (gap >= RENEGOTIATE_MS && !this.#stall.renegotiated) {
      // A new peer connection on the same socket; no picture from it in time: JPEG.
      log("stalled: renegotiating");
      this.#stall.renegotiated = true;
      this.#info.renegotiations += 1;
      this.#closePeer();
      this.#startWebRTC(this.#config).catch((e) => this.#fallBack("stalled", String(e)));
    } else if (gap >= RENEGOTIATE_MS && this.#stall.renegotiated) {
      this.#fallBack("stalled", "the picture froze");
    }
  }

  #fallBack(reason, detail) {
    if (this.forcedMode === "webrtc") {
      // Forced WebRTC: stop here and keep the first cause on screen.
      this.#closePeer();
      if (this.#info.state !== "failed") this.#set({ state: "failed", error: detail });
      return;
    }
    log("falling back to JPEG:", reason, detail);
    this.#closePeer();
    this.#startJpeg(reason);
  }

  // -- JPEG ----------------------------------------------------------------------------------

  #startJpeg(reason) {
    this.#fallbackReason = reason === "forced" ? null : reason;
    if (NETWORK_REASONS.has(reason) && this.forcedMode !== "jpeg") this.#scheduleWebRTCRetry();
    this.#video.hidden = true;
    this.#video.srcObject = null;
    this.#playButton.hidden = true;
    this.#canvas.hidden = false;
    this.#set({ mode: "JPEG", codec: "—", fallbackReason: reason, state: "waiting for pictures" });
    const maxWidth = Math.round(Math.max(screen.width, screen.height) * (devicePixelRatio || 1));
    this.#send({ type: "jpeg", reason, maxWidth: Math.min(7680, Math.max(160, maxWidth)) });
  }

  #scheduleWebRTCRetry() {
    // The network may get better: try WebRTC again later, less often each time it fails.
    clearTimeout(this.#webrtcRetryTimer);
    const after = this.#webrtcRetryS ?? this.webrtcRetryAfter;
    this.#webrtcRetryS = Math.min(WEBRTC_RETRY_MAX_S, after * 2);
    this.#webrtcRetryTimer = setTimeout(() => {
      if (!this.#running || this.#info.mode !== "JPEG") return;
      log("retrying WebRTC");
      this.#tryWebRTC = true;
      this.#stall = { keyframe: false, renegotiated: false };
      this.#teardown("bye");
      this.#connect();
    }, after * 1000);
  }

  #onPicture(buffer) {
    // Latest wins: while one picture decodes, only the newest waiting one is kept; a
    // replaced picture is acknowledged at once so the server's credit never leaks.
    if (this.#jpeg.busy) {
      if (this.#jpeg.pending) this.#send({ type: "ack" });
      this.#jpeg.pending = buffer;
      return;
    }
    this.#drawPicture(buffer);
  }

  async #drawPicture(buffer) {
    this.#jpeg.busy = true;
    const ws = this.#ws; // a picture of this socket, in JPEG mode
    let current = true;
    try {
      const view = new DataView(buffer);
      const captured = view.getFloat64(8);
      const bitmap = await createImageBitmap(
        new Blob([new Uint8Array(buffer, JPEG_HEADER_BYTES)], { type: "image/jpeg" }));
      // The element may have left JPEG mode (WebRTC retried) while this one decoded.
      current = ws === this.#ws && this.#info.mode === "JPEG";
      if (!current) {
        bitmap.close();
        return;
      }
      this.#draw(bitmap);
      this.#info.framesDrawn += 1;
      this.#info.latencyMs = Date.now() - captured * 1000;
      if (this.#info.state !== "playing") {
        this.#set({ state: "playing", error: "" });
        this.#keepAwake();
      }
    } catch (e) {
      log("picture not drawn", e);
    } finally {
      if (current) this.#send({ type: "ack" });
      this.#jpeg.busy = false;
      const next = this.#jpeg.pending;
      this.#jpeg.pending = null;
      if (next && current) this.#drawPicture(next);
    }
  }

  #draw(bitmap) {
    const canvas = this.#canvas;
    if (canvas.width !== bitmap.width || canvas.height !== bitmap.height) {
      canvas.width = bitmap.width;
      canvas.height = bitmap.height;
    }
    canvas.getContext("2d").drawImage(bitmap, 0, 0);
    bitmap.close();
  }

  async #showSnapshot() {
    // A first picture at once, while WebRTC negotiates: nobody stares at an empty box.
    try {
      // Small and light: on a slow link it must not hold up the video that follows it.
      const response = await fetch(
        new URL("snapshot.jpg?width=320&quality=50", this.url.replace(/^ws/, "http")),
        { cache: "no-store" });
      if (!response.ok) return;
      const bitmap = await createImageBitmap(await response.blob());
      if (this.#info.state === "playing") {
        bitmap.close();
        return;
      }
      this.#canvas.hidden = false;
      this.#draw(bitmap);
    } catch (e) {
      log("no snapshot", e);
    }
  }

  // -- phone comforts -----------------------------------------------------------------------

  async #keepAwake() {
    // A surveillance view should not let the screen sleep; where the browser allows it.
    if (this.#wakeLock || !navigator.wakeLock || document.hidden) return;
    try {
      this.#wakeLock = await navigator.wakeLock.request("screen");
      this.#wakeLock.addEventListener("release", () => { this.#wakeLock = null; });
    } catch (e) {
      log("no wake lock", e);
    }
  }

  #releaseWakeLock() {
    if (this.#wakeLock) this.#wakeLock.release().catch(() => {});
    this.#wakeLock = null;
  }

  #toggleFullscreen() {
    if (document.fullscreenElement) {
      document.exitFullscreen().catch(() => {});
    } else if (this.requestFullscreen) {
      this.requestFullscreen().catch((e) => log("no fullscreen", e));
    } else if (this.#video.webkitEnterFullscreen) {
      this.#video.webkitEnterFullscreen(); // iPhone Safari: only the video can go full screen
    }
  }

  // -- overlay -------------------------------------------------------------------------------

  async #pollStats() {
    const now = performance.now();
    let frames = this.#info.framesDrawn;
    if (this.#info.mode === "WebRTC" && this.#pc) {
      const stats = await this.#pc.getStats();
      frames = 0;
      stats.forEach((report) => {
        if (report.type === "inbound-rtp" && report.kind === "video") {
          frames = report.framesDecoded || 0;
        }
      });
    }
    if (this.#lastCount.at && frames >= this.#lastCount.frames) {
      this.#info.fps = ((frames - this.#lastCount.frames) * 1000) / (now - this.#lastCount.at);
    }
    this.#lastCount = { frames, at: now };
    this.#render();
    this.#reportStats();
  }

  #reportStats() {
    // What this viewer sees, for the server's /metrics (docs/protocol.md, "viewer-stats").
    const i = this.#info;
    if (++this.#report.polls < REPORT_EVERY_STATS) return;
    if (i.state !== "playing" && i.state !== "stalled") return;
    this.#report.polls = 0;
    const freezes = Math.max(0, i.stalls - this.#report.stalls);
    this.#report.stalls = i.stalls;
    const clamp = (value, low, high) => Math.min(high, Math.max(low, value));
    // Measurable in JPEG mode only (each picture carries its capture time); a WebRTC picture
    // does not, so a value left from an earlier JPEG spell must not be sent as its age.
    const age = i.mode === "JPEG" ? i.latencyMs : null;
    this.#send({
      type: "viewer-stats",
      fps: clamp(Math.round(i.fps * 10) / 10, 0, 240),
      freezes: Math.min(1000, freezes),
      pictureAgeMs: Number.isFinite(age) ? clamp(Math.round(age), -1000, 3600000) : null,
    });
  }
}

customElements.define("peercam-view", PeercamView);
