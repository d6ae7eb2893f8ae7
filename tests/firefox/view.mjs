// node view.mjs < JOB.json — open pages in Debian's Firefox ESR (headless, WebDriver BiDi,
// puppeteer-core: no browser download) and report what each showed. JOB is
//   {"view": "async () => {...}", "pages": [{"url": "...", "done": "JS over v", "timeoutS": 30}]}
// Each page is polled with the function `view` until the expression `done` over its result
// `v` holds (or the time is up); one browser serves every page (a launch costs seconds).
// Prints one line "REPORT " + JSON {"browser": "...", "pages": [{"ok", "first", "last",
// "samples", "console"}...]}. Used by tests/test_firefox.py; FIREFOX names the executable.
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import puppeteer from "puppeteer-core";

let input = "";
for await (const chunk of process.stdin) input += chunk;
const job = JSON.parse(input);
const executablePath = process.env.FIREFOX || "/usr/bin/firefox-esr";

// Loopback WebRTC, autoplay, and no traffic of Firefox's own (updates, telemetry, captive
// portal checks, safe browsing, the new-tab page's feeds): the test network has only lo.
const prefs = {
  "media.peerconnection.ice.loopback": true,
  "media.peerconnection.ice.force_interface": "lo",
  "media.peerconnection.ice.obfuscate_host_addresses": false,
  "media.peerconnection.ice.default_address_only": false,
  "media.peerconnection.ice.no_host": false,
  "media.peerconnection.use_document_iceservers": true,
  "media.navigator.permission.disabled": true,
  "media.autoplay.default": 0,
  "media.autoplay.blocking_policy": 0,
  "media.gmp-manager.updateEnabled": false,
  "media.gmp-gmpopenh264.enabled": false,
  "media.gmp-gmpopenh264.autoupdate": false,
  "app.update.enabled": false,
  "app.update.auto": false,
  "app.normandy.enabled": false,
  "browser.safebrowsing.malware.enabled": false,
  "browser.safebrowsing.phishing.enabled": false,
  "browser.safebrowsing.downloads.enabled": false,
  "browser.safebrowsing.provider.google4.updateURL": "",
  "browser.newtabpage.enabled": false,
  "browser.newtabpage.activity-stream.feeds.system.topstories": false,
  "browser.startup.homepage_override.mstone": "ignore",
  "browser.shell.checkDefaultBrowser": false,
  "datareporting.policy.dataSubmissionEnabled": false,
  "datareporting.healthreport.uploadEnabled": false,
  "toolkit.telemetry.enabled": false,
  "toolkit.telemetry.unified": false,
  "toolkit.telemetry.server": "",
  "network.captive-portal-service.enabled": false,
  "network.connectivity-service.enabled": false,
  "network.dns.disablePrefetch": true,
  "network.prefetch-next": false,
  "extensions.update.enabled": false,
  "extensions.getAddons.cache.enabled": false,
  "extensions.blocklist.enabled": false,
  "services.settings.server": "",
  "security.certerrors.mitm.priming.enabled": false,
};

// Progress on stderr, with the seconds since start: when a run hangs, the test shows how far
// it got (the launch, a page's load, its polling, the close).
const started = Date.now();
function progress(what) {
  process.stderr.write(`[${((Date.now() - started) / 1000).toFixed(1)} s] ${what}\n`);
}

async function watch(browser, { url, done, timeoutS }) {
  progress(`new page for ${url}`);
  const page = await browser.newPage();
  const consoleLines = [];
  page.on("console", (msg) => consoleLines.length < 200 && consoleLines.push(msg.text()));
  try {
    progress(`loading ${url}`);
    await page.goto(url, { timeout: 60_000 });
    progress(`loaded ${url}`);
    const isDone = new Function("v", `return ${done};`);
    const deadline = Date.now() + timeoutS * 1000;
    let first = null;
    let last = null;
    let samples = 0;
    let ok = false;
    while (Date.now() < deadline) {
      last = await page.evaluate(`(${job.view})()`);
      samples += 1;
      if (last && first === null) first = last;
      if (last && isDone(last)) { ok = true; break; }
      // Polling the page's state: there is no event to wait for.
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
    progress(`${ok ? "done" : "timed out"} after ${samples} samples: ${JSON.stringify(last)}`);
    return { url, ok, first, last, samples, console: consoleLines };
  } finally {
    await page.close();
  }
}

// Firefox gathers host candidates on the default route's interface only, unless the page may
// use the camera (PeerConnectionImpl::GetPrefDefaultAddressOnly); the test network has no
// default route, only lo. A camera permission for the pages' origins (never used: peercam's
// page only receives) lets it gather on lo. WebDriver BiDi cannot grant "camera" (Firefox
// 153), so it comes from a default-permissions file.
const scratch = mkdtempSync(join(tmpdir(), "peercam-firefox-"));
const permissions = join(scratch, "permissions");
const origins = [...new Set(job.pages.map((p) => new URL(p.url).origin))];
writeFileSync(permissions, origins.map((o) => `origin\tcamera\t1\t${o}\n`).join(""));
prefs["permissions.manager.defaultsUrl"] = pathToFileURL(permissions).href;

progress(`launching ${executablePath}`);
const browser = await puppeteer.launch({
  browser: "firefox",
  protocol: "webDriverBiDi",
  executablePath,
  headless: true,
  acceptInsecureCerts: true,
  extraPrefsFirefox: prefs,
  // A busy 2-core machine: the first start of a fresh profile can take half a minute.
  timeout: 60_000,
  // One command that gets no answer (a content process that died, say) fails in 45 s with
  // its name, instead of puppeteer's default of three minutes.
  protocolTimeout: 45_000,
  dumpio: true,  // Firefox's own stderr too, into the test's failure message
  // Firefox's own sandboxes rely on user namespaces and seccomp, which containers and CI
  // machines restrict in different ways (as root, Chromium's tests run with --no-sandbox).
  env: {
    ...process.env,
    MOZ_DISABLE_CONTENT_SANDBOX: "1",
    MOZ_DISABLE_GMP_SANDBOX: "1",
    MOZ_DISABLE_RDD_SANDBOX: "1",
    MOZ_DISABLE_SOCKET_PROCESS_SANDBOX: "1",
    MOZ_DISABLE_UTILITY_SANDBOX: "1",
  },
});
progress(`launched ${await browser.version()}`);
try {
  const pages = [];
  for (const page of job.pages) pages.push(await watch(browser, page));
  // The report goes out before the close: a close that hangs must not lose it.
  // One line behind "REPORT ": with dumpio, Firefox's own stdout shares this stream.
  const report = { browser: await browser.version(), pages };
  process.stdout.write(`\nREPORT ${JSON.stringify(report)}\n`);
} finally {
  progress("closing");
  // At most 15 s for the close; then the process ends, and the test kills the process group.
  const closed = await Promise.race([
    browser.close().then(() => true, () => false),
    new Promise((resolve) => setTimeout(() => resolve(false), 15_000).unref()),
  ]);
  progress(closed ? "closed" : "close did not finish");
  rmSync(scratch, { recursive: true, force: true });
}
process.exit(0);
