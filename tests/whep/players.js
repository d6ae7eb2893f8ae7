// The two WHEP players under test, bundled by esbuild into dist/players.js (not committed):
// medooze's WHEPClient (whip-whep: posts before gathering, trickles by PATCH) and Eyevinn's
// WebRTCPlayer (CommonJS; waits for gathering, no trickle). The glue below only starts one,
// keeps the latest inbound video figures for the test to poll, and stops it (DELETE).
import { WHEPClient } from "whip-whep/whep.js";
import { WebRTCPlayer } from "@eyevinn/webrtc-player";

const video = () => document.querySelector("video");

function watch(peerConnection) {
  const figures = { framesDecoded: 0, mimeType: null, connection: null, width: 0 };
  window.whepFigures = figures;
  setInterval(async () => {
    const pc = peerConnection();
    if (!pc) return;
    figures.connection = pc.connectionState;
    try {
      const report = await pc.getStats();
      report.forEach((r) => {
        if (r.type === "inbound-rtp" && r.kind === "video") {
          figures.framesDecoded = r.framesDecoded || 0;
          figures.width = r.frameWidth || 0;
          figures.mimeType = report.get(r.codecId)?.mimeType ?? null;
        }
      });
    } catch (e) {
      figures.error = String(e); // closed meanwhile
    }
  }, 100);
}

const players = {
  async whipWhep(url, token) {
    const pc = new RTCPeerConnection({ iceServers: [] });
    // As WHEP players offer: audio first (the server answers it inactive), then video.
    pc.addTransceiver("audio", { direction: "recvonly" });
    pc.addTransceiver("video", { direction: "recvonly" });
    pc.ontrack = (event) => {
      if (event.track.kind === "video") video().srcObject = new MediaStream([event.track]);
    };
    const client = new WHEPClient();
    watch(() => pc);
    await client.view(pc, url, token);
    return () => client.stop();
  },
  async eyevinn(url, token) {
    const player = new WebRTCPlayer({ video: video(), type: "whep", iceServers: [] });
    watch(() => player.peer);
    await player.load(new URL(url), `Bearer ${token}`);
    return () => player.unload();
  },
};

window.startPlayer = async (name, url, token) => {
  window.stopPlayer = await players[name](url, token);
};
