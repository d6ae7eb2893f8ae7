// The wall: every camera as a live tile; a click opens the camera's own page (cam/NAME/).
//
// Each tile asks for `cam/NAME/tile.jpg?after=SEQ`: the server answers with the camera's
// newest small picture newer than SEQ from the one tile encoder every wall shares (about two
// a second), so a tile is refreshed as fast as that encoder goes and no faster. URLs are
// relative to the page, so the wall works under a reverse proxy's path prefix.

const log = (...args) => console.debug("[peercam-wall]", ...args);
const MIN_INTERVAL_MS = 400; // never more than this often per tile, whatever the server does
const RETRY_MS = [1000, 2000, 4000]; // after a failed request (server restarting, …)

class Tile {
  constructor(name) {
    this.name = name;
    this.seq = 0;
    this.failures = 0;
    this.url = null;
    this.element = document.createElement("a");
    this.element.className = "tile";
    this.element.href = `cam/${encodeURIComponent(name)}/`;
    this.element.dataset.camera = name;
    this.element.dataset.state = "loading";
    this.element.dataset.pictures = "0";
    this.image = document.createElement("img");
    this.image.alt = `camera ${name}`;
    const label = document.createElement("span");
    label.className = "name";
    label.textContent = name;
    const state = document.createElement("span");
    state.className = "state";
    state.textContent = "no signal";
    this.element.append(this.image, label, state);
  }

  async run(signal) {
    while (!signal.aborted) {
      const started = performance.now();
      try {
        await this.#refresh(signal);
        this.failures = 0;
      } catch (e) {
        if (signal.aborted) return;
        log(this.name, "tile failed", e);
        this.element.dataset.state = "error";
        await sleep(RETRY_MS[Math.min(this.failures++, RETRY_MS.length - 1)], signal);
        continue;
      }
      await sleep(MIN_INTERVAL_MS - (performance.now() - started), signal);
    }
  }

  async #refresh(signal) {
    const response = await fetch(`cam/${encodeURIComponent(this.name)}/tile.jpg?after=${this.seq}`, {
      cache: "no-store",
      credentials: "same-origin",
      signal,
    });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const blob = await response.blob();
    this.seq = Number(response.headers.get("X-Seq")) || 0;
    const url = URL.createObjectURL(blob);
    this.image.src = url;
    await this.image.decode().catch(() => {}); // a broken picture still counts as an answer
    if (this.url) URL.revokeObjectURL(this.url);
    this.url = url;
    this.element.dataset.state = response.headers.get("X-Live") === "1" ? "live" : "no-signal";
    this.element.dataset.pictures = String(Number(this.element.dataset.pictures) + 1);
    this.element.dataset.updated = String(Date.now());
  }
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    if (ms <= 0 || signal.aborted) return resolve();
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
  });
}

async function main() {
  const wall = document.getElementById("wall");
  let cameras;
  try {
    const response = await fetch("api/cameras", { cache: "no-store", credentials: "same-origin" });
    if (!response.ok) throw new Error(`HTTP ${response.status}: ${await response.text()}`);
    cameras = (await response.json()).cameras;
  } catch (e) {
    const error = document.getElementById("wall-error");
    error.textContent = `cannot list the cameras: ${e.message}`;
    error.hidden = false;
    return;
  }
  const tiles = cameras.map((c) => new Tile(c.name));
  wall.append(...tiles.map((t) => t.element));
  let controller = null;
  const start = () => {
    if (controller) return;
    controller = new AbortController();
    for (const tile of tiles) tile.run(controller.signal);
  };
  const stop = () => { controller?.abort(); controller = null; };
  // Nothing is fetched for a hidden page: a wall left in a background tab costs nothing.
  document.addEventListener("visibilitychange", () => (document.hidden ? stop() : start()));
  if (!document.hidden) start();
}

main();
