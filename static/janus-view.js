// <janus-view>: watch peercam's stream through a Janus streaming mountpoint that peercam feeds
// (peercam --janus URL). Janus makes the offer: create a session, attach the streaming plugin,
// "watch" the mountpoint, answer, "start". The page asks ?janus=URL (Janus' HTTP API) and
// optionally ?id=N (else the first mountpoint whose description says "peercam").
// A separate, small path on purpose: the peercam page's own protocol (/ws) is not involved.

const RETRY_FIRST_MS = 1000;
const RETRY_MAX_MS = 15000;
const POLL_ERROR_LIMIT = 3;

function log(...args) {
  console.debug("[janus-view]", ...args);
}

function transaction() {
  return Math.random().toString(36).slice(2, 12);
}

/** One Janus session over the HTTP API, with the streaming plugin attached. */
class JanusSession {
  constructor(base) {
    this.base = base.replace(/\/+$/, "");
    this.session = null;
    this.handle = null;
  }

  async post(path, message) {
    const response = await fetch(this.base + path, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ ...message, transaction: transaction() }),
    });
    const reply = await response.json();
    if (reply.janus === "error") {
      throw new Error(`janus: ${reply.error?.reason ?? "error"}`);
    }
    return reply;
  }

  async open() {
    this.session = (await this.post("", { janus: "create" })).data.id;
    const attached = await this.post(`/${this.session}`, {
      janus: "attach", plugin: "janus.plugin.streaming",
    });
    this.handle = attached.data.id;
  }

  message(body, jsep) {
    const message = { janus: "message", body };
    if (jsep) message.jsep = jsep;
    return this.post(`/${this.session}/${this.handle}`, message);
  }

  trickle(candidate) {
    return this.post(`/${this.session}/${this.handle}`, { janus: "trickle", candidate });
  }

  /** The next batch of events (a long poll: it also keeps the session alive). */
  async events(signal) {
    const url = `${this.base}/${this.session}?maxev=5&rid=${Date.now()}`;
    const response = await fetch(url, { signal });
    const events = await response.json();
    return Array.isArray(events) ? events : [events];
  }

  async close() {
    if (this.session === null) return;
    const session = this.session;
    this.session = null;
    try {
      await this.post(`/${session}`, { janus: "destroy" });
    } catch (error) {
      log("destroy failed", error);
    }
  }
}

class JanusView extends HTMLElement {
  connectedCallback() {
    const params = new URLSearchParams(location.search);
    this.base = params.get("janus");
    this.mountpoint = params.has("id") ? Number(params.get("id")) : null;
    this.video = document.createElement("video");
    Object.assign(this.video, { autoplay: true, muted: true, playsInline: true });
    this.video.style.cssText = "width:100%;height:100%;object-fit:contain;background:#000";
    this.status = document.createElement("div");
    this.status.style.cssText = "position:absolute;left:8px;top:8px;color:#fff;font:14px sans-serif";
    this.style.cssText = "display:block;position:relative;width:100vw;height:100vh";
    this.replaceChildren(this.video, this.status);
    // The state as values (tests and the overlay read it): never the display text.
    this.state = { phase: "idle", mountpoint: null, error: null, attempts: 0, frames: 0 };
    if ("requestVideoFrameCallback" in this.video) {
      const counted = () => {
        this.state.frames += 1; // pictures shown, across reconnections
        this.video.requestVideoFrameCallback(counted);
      };
      this.video.requestVideoFrameCallback(counted);
    }
    window.__janus = this;
    this.retryMs = RETRY_FIRST_MS;
    this.stopped = false;
    if (!this.base) {
      this.show("error", "give ?janus=http://host:8088/janus");
      return;
    }
    this.run();
  }

  disconnectedCallback() {
    this.stopped = true;
    this.teardown();
  }

  show(phase, error = null) {
    Object.assign(this.state, { phase, error });
    const text = { connecting: "connecting to Janus…", playing: "", error: `Janus: ${error}` };
    this.status.textContent = text[phase] ?? phase;
  }

  async run() {
    while (!this.stopped) {
      this.state.attempts += 1;
      try {
        await this.watch();
      } catch (error) {
        log("watch ended", error);
        this.show("error", String(error.message ?? error));
      }
      this.teardown();
      if (this.stopped) return;
      await new Promise((resolve) => setTimeout(resolve, this.retryMs));
      this.retryMs = Math.min(RETRY_MAX_MS, this.retryMs * 2);
    }
  }

  async chooseMountpoint(janus) {
    if (this.mountpoint !== null) return this.mountpoint;
    const reply = await janus.message({ request: "list" });
    const found = (reply.plugindata?.data?.list ?? []).find(
      (m) => String(m.description ?? "").includes("peercam"),
    );
    if (!found) throw new Error("no peercam mountpoint on this Janus");
    return found.id;
  }

  /** One viewing: resolves or throws when it ends (Janus gone, hangup, failed connection). */
  async watch() {
    this.show("connecting");
    const janus = this.janus = new JanusSession(this.base);
    this.abort = new AbortController();
    await janus.open();
    const id = this.state.mountpoint = await this.chooseMountpoint(janus);
    await janus.message({ request: "watch", id });
    let pollErrors = 0;
    while (!this.stopped) {
      let events;
      try {
        events = await janus.events(this.abort.signal);
        pollErrors = 0;
      } catch (error) {
        if (this.stopped || ++pollErrors >= POLL_ERROR_LIMIT) throw error;
        continue;
      }
      for (const event of events) {
        if (event.janus === "hangup" || event.janus === "detached") {
          throw new Error(event.reason ?? event.janus);
        }
        const result = event.plugindata?.data;
        if (result?.error) throw new Error(result.error);
        if (event.jsep?.type === "offer") await this.answer(janus, event.jsep);
      }
      if (["failed", "closed"].includes(this.pc?.connectionState)) {
        throw new Error(`connection ${this.pc.connectionState}`);
      }
    }
  }

  async answer(janus, offer) {
    this.pc?.close(); // a new offer (Janus renegotiates): one peer connection at a time
    const pc = this.pc = new RTCPeerConnection({ iceServers: [] });
    pc.ontrack = (event) => {
      this.video.srcObject = event.streams[0] ?? new MediaStream([event.track]);
    };
    pc.onicecandidate = (event) => {
      const candidate = event.candidate
        ? { candidate: event.candidate.candidate, sdpMid: event.candidate.sdpMid,
            sdpMLineIndex: event.candidate.sdpMLineIndex }
        : { completed: true };
      janus.trickle(candidate).catch((error) => log("trickle failed", error));
    };
    pc.onconnectionstatechange = () => {
      log("connection", pc.connectionState);
      if (pc.connectionState === "connected") {
        this.show("playing");
        this.retryMs = RETRY_FIRST_MS; // it worked: the next drop is retried soon
      }
      if (["failed", "closed"].includes(pc.connectionState)) this.abort?.abort();
    };
    await pc.setRemoteDescription(offer);
    await pc.setLocalDescription(await pc.createAnswer());
    await janus.message({ request: "start" }, { type: "answer", sdp: pc.localDescription.sdp });
  }

  teardown() {
    this.abort?.abort();
    this.pc?.close();
    this.pc = null;
    this.janus?.close();
    this.janus = null;
  }
}

customElements.define("janus-view", JanusView);
