// Live status when the network misbehaves: the page's WebSocket is routed through this script, which
// first delivers each job's pushes out of order (its end first, then the older ones it held back), then
// drops every push as if the notifier never found the subscription. The page must keep the newest
// state, and still see a job end without any push.
// Usage: node live-status.mjs BASE_URL ARTIFACT_DIR
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { launch, signInAsDevUser, watchedPage } from "./chromium.mjs";

const [base, artifacts] = process.argv.slice(2);
if (!base || !artifacts) {
  console.error("usage: node live-status.mjs BASE_URL ARTIFACT_DIR");
  process.exit(2);
}
mkdirSync(artifacts, { recursive: true });
const TERMINAL = new Set(["completed", "failed", "cancelled"]);

const { browser, close } = await launch();

// How pushes (`{"type":"job"}` frames from the server) reach the page: "reorder" holds a job's pushes
// until its final one, delivers that, then the held ones (all older); "drop" delivers none.
let mode = "reorder";
const held = new Map();
let staleDelivered = 0;
await browser.routeWebSocket(/\/ws(\?|$)/, (ws) => {
  const server = ws.connectToServer();
  server.onMessage((frame) => {
    let message;
    try {
      message = JSON.parse(frame);
    } catch {
      message = null;
    }
    if (!message || message.type !== "job") return ws.send(frame);
    if (mode === "drop") return;
    if (!TERMINAL.has(message.status)) {
      held.set(message.jobId, [...(held.get(message.jobId) || []), message]);
      return;
    }
    ws.send(frame);
    // The pushes held back, now stale; if none came, one made older than the final push.
    const older = { ...message, status: "processing", progress: 50, result: null };
    older.updatedAt = new Date(Date.parse(message.updatedAt) - 1000).toISOString();
    const stale = held.get(message.jobId) || [older];
    held.delete(message.jobId);
    for (const push of stale) ws.send(JSON.stringify(push));
    staleDelivered += stale.length;
  });
});

let page;
try {
  const watched = await watchedPage(browser);
  page = watched.page;
  const problems = watched.problems;
  await signInAsDevUser(page, base, "live-status-user");

  // Out of order: the job's end arrives first, then its older `processing` pushes. The page keeps the end.
  const ignored = page
    .waitForEvent("console", { predicate: (message) => message.text().includes("older than the one shown"), timeout: 60000 })
    .then(() => "ignored", () => "no notice");
  await page.getByLabel("Message").fill("pushed out of order");
  await page.getByLabel("Work for (ms)").fill("1500");
  await page.getByRole("button", { name: "Submit" }).click();
  const reordered = page.locator(".job").first();
  await reordered.locator(".status[data-status=completed]").waitFor({ timeout: 30000 });
  const wentBack = reordered
    .locator(".status:not([data-status=completed])")
    .waitFor({ timeout: 60000 })
    .then(() => "went back", () => "stayed");
  await Promise.race([ignored, wentBack]);
  if (staleDelivered === 0) throw new Error("no stale push was delivered");
  const shown = await reordered.locator(".status").getAttribute("data-status");
  if (shown !== "completed") throw new Error(`an older push took the job back to ${shown}`);
  const progress = await reordered.locator(".progress").getAttribute("aria-valuenow");
  if (progress !== "100") throw new Error(`progress shows ${progress}, not 100`);

  // No push at all: the subscription is confirmed with a read, and a slow poll finds the end.
  mode = "drop";
  await page.getByLabel("Message").fill("never pushed");
  await page.getByLabel("Work for (ms)").fill("1000");
  await page.getByRole("button", { name: "Submit" }).click();
  await page.locator(".job").nth(1).waitFor({ timeout: 30000 });
  const unpushed = page.locator(`.job[data-id="${await page.locator(".job").first().getAttribute("data-id")}"]`);
  await unpushed.locator(".status[data-status=completed]").waitFor({ timeout: 90000 });
  await unpushed.locator(".result pre", { hasText: "never pushed" }).waitFor({ timeout: 10000 });
  if ((await page.locator(".live").getAttribute("data-mode")) !== "live") throw new Error("the socket went down");

  await page.screenshot({ path: join(artifacts, "browser-live-status.png"), fullPage: true });
  if (problems.length) throw new Error(problems.join("\n"));
  console.log("browser: the newest state kept, a job with no push still seen to end");
} catch (error) {
  if (page) await page.screenshot({ path: join(artifacts, "browser-live-status-failure.png"), fullPage: true }).catch(() => {});
  console.error(error.stack || String(error));
  process.exitCode = 1;
} finally {
  await close();
}
