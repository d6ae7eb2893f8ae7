// <peercam-view>: one element that connects to peercam's /ws, negotiates WebRTC and plays it.
// Protocol: docs/protocol.md. No build step: a plain ES module.

const RECONNECT_MIN_MS = 500;
const RECONNECT_MAX_MS = 10000;
const STATS_INTERVAL_MS = 1000;

const TEMPLATE = `
<style>
  :host { display: block; position: relative; background: #000; overflow: hidden;
          contain: strict; }
  video { position: absolute; inset: 0; width: 100%; height: 100%; object-fit: contain;
          background: #000; }
  .overlay { position: absolute; left: max(8px, env(safe-area-inset-left));
             top: max(8px, env(safe-area-inset-top)); padding: 4px 8px; border-radius: 4px;
             background: rgba(0, 0, 0, 0.55); color: #fff;
             font: 13px/1.4 system-ui, -apple-system, sans-serif;
             pointer-events: none; white-space: pre; max-width: calc(100% - 32px);
             overflow: hidden; text-overflow: ellipsis; }
  .overlay.error { background: rgba(160, 0, 0, 0.75); }
</style>
<video autoplay muted playsinline disablepictureinpicture></video>
<div class="overlay" part="overlay">connecting…</div>
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

class PeercamView extends HTMLElement {
  #ws = null;
  #pc = null;
  #video;
  #overlay;
  #retryMs = RECONNECT_MIN_MS;
  #retryTimer = null;
  #statsTimer = null;
  #running = false;
  #info = { mode: "—", codec: "—", state: "connecting", fps: 0, error: "" };
  #lastFrames = { frames: 0, at: 0 };
  #onVisibility = () => (document.hidden ? this.#stop() : this.#start());

  constructor() {
    super();
    const root = this.attachShadow({ mode: "open" });
    root.innerHTML = TEMPLATE;
    this.#video = root.querySelector("video");
    this.#overlay = root.querySelector(".overlay");
    this.#video.addEventListener("resize", () => this.#render());
  }

  /** The WebSocket URL: the `src` attribute, or /ws on this page's server. */
  get url() {
    const src = this.getAttribute("src");
    if (src) return new URL(src, location.href).href.replace(/^http/, "ws");
    return `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}/ws`;
  }

  /** The codec to prefer: the `codec` attribute, else the page's ?codec= parameter. */
  get preferredCodec() {
    const value = this.getAttribute("codec") || new URLSearchParams(location.search).get("codec");
    return value === "vp8" || value === "h264" ? value : null;
  }

  /** For diagnostics and tests: the current RTCPeerConnection, if any. */
  get peerConnection() { return this.#pc; }
  get video() { return this.#video; }
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
    this.#retryTimer = this.#statsTimer = null;
    this.#teardown("bye");
  }

  #teardown(reason) {
    const ws = this.#ws;
    this.#ws = null;
    if (ws) {
      ws.onclose = ws.onmessage = ws.onerror = null;
      if (ws.readyState === WebSocket.OPEN) {
        if (reason === "bye") ws.send(JSON.stringify({ type: "bye" }));
        ws.close();
      }
    }
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
    const v = this.#video;
    const size = v.videoWidth ? `${v.videoWidth}×${v.videoHeight}` : "—";
    const lines = [`${i.mode} · ${i.codec} · ${size} · ${i.fps.toFixed(0)} fps`];
    if (i.state !== "playing") lines.push(i.error || i.state);
    this.#overlay.textContent = lines.join("\n");
    this.#overlay.classList.toggle("error", Boolean(i.error));
  }

  #connect() {
    this.#set({ state: "connecting", error: "" });
    const ws = new WebSocket(this.url);
    this.#ws = ws;
    ws.onmessage = (event) => this.#onMessage(event);
    ws.onclose = (event) => {
      log("socket closed", event.code, event.reason);
      this.#teardown();
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
    if (typeof event.data !== "string") return;
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
        await this.#startWebRTC(msg);
        break;
      case "answer":
        this.#set({ codec: (msg.codec || "").toUpperCase() });
        if (this.#pc) await this.#pc.setRemoteDescription({ type: "answer", sdp: msg.sdp });
        break;
      case "error":
        log("server error", msg.code, msg.message);
        this.#set({ error: `${msg.code}: ${msg.message}` });
        break;
      case "bye":
        log("server said bye:", msg.reason);
        break;
      default:
        log("ignoring message type", msg.type);
    }
  }

  async #startWebRTC(config) {
    if (!window.RTCPeerConnection) {
      this.#set({ mode: "none", state: "this browser cannot play WebRTC", error: "no WebRTC" });
      return;
    }
    const pc = new RTCPeerConnection({
      iceServers: config.iceServers || [],
      iceTransportPolicy: config.iceTransportPolicy || "all",
    });
    this.#pc = pc;
    this.#set({ mode: "WebRTC" });
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
      this.#video.play().catch((e) => log("autoplay refused", e));
    };
    pc.onconnectionstatechange = () => {
      const state = pc.connectionState;
      log("connection", state);
      if (state === "connected") {
        this.#retryMs = RECONNECT_MIN_MS;
        this.#set({ state: "playing", error: "" });
      } else if (state === "failed") {
        this.#set({ state: "failed", error: "WebRTC connection failed" });
      }
    };
    const offer = await pc.createOffer();
    await pc.setLocalDescription(offer);
    this.#send({ type: "offer", sdp: pc.localDescription.sdp });
  }

  async #pollStats() {
    const pc = this.#pc;
    if (!pc) return;
    const stats = await pc.getStats();
    stats.forEach((report) => {
      if (report.type === "inbound-rtp" && report.kind === "video") {
        const now = performance.now();
        const frames = report.framesDecoded || 0;
        if (this.#lastFrames.at) {
          const fps = ((frames - this.#lastFrames.frames) * 1000) / (now - this.#lastFrames.at);
          this.#info.fps = Math.max(0, fps);
        }
        this.#lastFrames = { frames, at: now };
      }
    });
    this.#render();
  }
}

customElements.define("peercam-view", PeercamView);
