// The connectivity check (/check): one WebRTC session per path, each on its own /ws socket,
// then a plain-language suggestion. Results are also in document.body.dataset / window.results
// for scripts and tests.

const PATH_TIMEOUT_MS = 8000;

const PATHS = [
  { id: "direct", label: "Direct", policy: "all", servers: () => [],
    note: "host candidates only, no STUN or TURN" },
  { id: "stun", label: "Through NAT (STUN)", policy: "all", servers: (c) => byScheme(c, ["stun"]),
    note: "server-reflexive candidates" },
  { id: "turn-udp", label: "TURN over UDP", policy: "relay",
    servers: (c) => withTransport(byScheme(c, ["turn"]), "udp"), note: "relay only" },
  { id: "turn-tcp", label: "TURN over TCP", policy: "relay",
    servers: (c) => withTransport(byScheme(c, ["turn"]), "tcp"), note: "relay only" },
  { id: "turns", label: "TURN over TLS", policy: "relay",
    servers: (c) => byScheme(c, ["turns"]), note: "relay only" },
];

function byScheme(config, schemes) {
  const out = [];
  for (const server of config.iceServers || []) {
    const urls = [].concat(server.urls).filter((u) => schemes.includes(u.split(":")[0]));
    if (urls.length) out.push({ ...server, urls });
  }
  return out;
}

function withTransport(servers, transport) {
  return servers.map((s) => ({
    ...s,
    urls: [...new Set(s.urls.map((u) => `${u.split("?")[0]}?transport=${transport}`))],
  }));
}

function wsUrl() {
  // Relative to this page: works under any path prefix (/cam/check → /cam/ws).
  return new URL("ws", location.href).href.replace(/^http/, "ws");
}

function openSocket() {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(wsUrl());
    ws.onmessage = (event) => {
      const msg = JSON.parse(event.data);
      if (msg.type === "config") {
        ws.onmessage = null;
        resolve({ ws, config: msg });
      }
    };
    // A refused socket (4401, 4403, 4421) closes with a reason that says what to change.
    ws.onclose = (event) => reject(new Error(event.reason || "cannot reach the server's WebSocket"));
  });
}

async function selectedPair(pc) {
  const stats = await pc.getStats();
  let pair = null;
  stats.forEach((r) => {
    if (r.type === "transport" && r.selectedCandidatePairId) pair = stats.get(r.selectedCandidatePairId);
  });
  if (!pair) {
    stats.forEach((r) => {
      if (r.type === "candidate-pair" && r.state === "succeeded" && (r.nominated || !pair)) pair = r;
    });
  }
  if (!pair) return null;
  const local = stats.get(pair.localCandidateId) || {};
  const remote = stats.get(pair.remoteCandidateId) || {};
  return {
    local: local.candidateType, remote: remote.candidateType,
    protocol: local.relayProtocol || local.protocol,
    text: `${local.candidateType}/${local.relayProtocol || local.protocol} ${local.address || ""}` +
          ` → ${remote.candidateType} ${remote.address || ""}:${remote.port || ""}`,
  };
}

async function tryPath(path, config) {
  const servers = path.servers(config);
  if (path.id !== "direct" && servers.length === 0) {
    return { status: "skipped", detail: "not configured on the server" };
  }
  const { ws } = await openSocket();
  const pc = new RTCPeerConnection({ iceServers: servers, iceTransportPolicy: path.policy });
  try {
    pc.addTransceiver("video", { direction: "recvonly" });
    pc.onicecandidate = ({ candidate }) => {
      if (ws.readyState !== WebSocket.OPEN) return;
      ws.send(JSON.stringify(candidate
        ? { type: "candidate", candidate: candidate.candidate, sdpMid: candidate.sdpMid,
            sdpMLineIndex: candidate.sdpMLineIndex }
        : { type: "candidate", candidate: null }));
    };
    const connected = new Promise((resolve) => {
      pc.onconnectionstatechange = () => {
        if (["connected", "failed", "closed"].includes(pc.connectionState)) resolve(pc.connectionState);
      };
      setTimeout(() => resolve("timeout"), PATH_TIMEOUT_MS);
    });
    ws.onmessage = async (event) => {
      if (typeof event.data !== "string") return;
      const msg = JSON.parse(event.data);
      if (msg.type === "answer") await pc.setRemoteDescription({ type: "answer", sdp: msg.sdp });
    };
    await pc.setLocalDescription(await pc.createOffer());
    ws.send(JSON.stringify({ type: "offer", sdp: pc.localDescription.sdp }));
    const state = await connected;
    if (state !== "connected") return { status: "fails", detail: `no connection (${state})` };
    const pair = await selectedPair(pc);
    // "Direct" and "STUN" must not count a path that only works through the server's own
    // relay (behind a symmetric NAT, STUN's path reaches the server's TURN allocation).
    if (path.policy !== "relay" && pair && (pair.local === "relay" || pair.remote === "relay")) {
      return { status: "fails", detail: "only through the server's relay", pair };
    }
    if (path.policy === "relay" && pair && pair.local !== "relay") {
      return { status: "fails", detail: "did not use the relay", pair };
    }
    return { status: "works", pair };
  } catch (e) {
    return { status: "fails", detail: String(e.message || e) };
  } finally {
    pc.close();
    if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "bye" }));
    ws.close();
  }
}

function advice(results) {
  const works = (id) => results[id]?.status === "works";
  const configured = (id) => results[id] && results[id].status !== "skipped";
  if (works("direct")) {
    return "Direct connections work from this network: nothing else is needed here.";
  }
  if (works("stun")) {
    return "This network is behind NAT, and STUN gets through it: video works without a relay.";
  }
  if (works("turn-udp")) {
    return "Direct paths are blocked here, but TURN over UDP works: keep the TURN server configured.";
  }
  if (works("turn-tcp") || works("turns")) {
    return "This network blocks UDP: TURN over TCP works. For the strictest networks, also offer " +
           "TURN over TLS on port 443 (turns:HOST:443?transport=tcp).";
  }
  if (!configured("turn-udp") && !configured("turn-tcp") && !configured("turns")) {
    return "No path works and no TURN server is configured: start peercam with " +
           "--ice-server turn:HOST:3478 (and turn:HOST:443?transport=tcp for networks that block " +
           "UDP). Viewers still get video in JPEG mode.";
  }
  return "This network blocks UDP and the configured TURN paths: configure TURN over TCP on " +
         "port 443 (turns:HOST:443?transport=tcp). Viewers still get video in JPEG mode.";
}

function render(results, done) {
  const body = document.getElementById("paths");
  body.replaceChildren(...PATHS.map((path) => {
    const r = results[path.id] || { status: "running" };
    const row = document.createElement("tr");
    row.dataset.path = path.id;
    row.dataset.status = r.status;
    const name = document.createElement("td");
    name.innerHTML = `${path.label}<br><small>${path.note}</small>`;
    const result = document.createElement("td");
    result.className = `result ${r.status}`;
    result.textContent = { works: "works", fails: "fails", skipped: "not configured",
                           running: "checking…" }[r.status];
    const pair = document.createElement("td");
    pair.textContent = r.pair ? r.pair.text : (r.detail || "");
    row.append(name, result, pair);
    return row;
  }));
  document.getElementById("advice").textContent = done ? advice(results) : "checking…";
}

async function run() {
  const results = {};
  window.results = results;
  document.body.dataset.done = "false";
  render(results, false);
  if (!window.RTCPeerConnection) {
    for (const path of PATHS) results[path.id] = { status: "fails", detail: "no WebRTC here" };
    render(results, true);
    document.getElementById("advice").textContent =
      "This browser has no WebRTC: it will get video as JPEG pictures.";
    document.body.dataset.done = "true";
    return;
  }
  let config;
  try {
    const probe = await openSocket();
    config = probe.config;
    probe.ws.close();
  } catch (e) {
    document.getElementById("advice").textContent = String(e.message || e);
    document.body.dataset.done = "true";
    return;
  }
  for (const path of PATHS) {
    results[path.id] = await tryPath(path, config);
    render(results, false);
  }
  render(results, true);
  document.body.dataset.done = "true";
}

document.getElementById("again").addEventListener("click", run);
run();
