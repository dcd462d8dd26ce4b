// Submits a job in the web UI as a person would and waits, without reloading, until the page shows it
// completed with its result. Usage: node submit-job.mjs BASE_URL ARTIFACT_DIR
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { launch, signInAsDevUser, watchedPage } from "./chromium.mjs";

const [base, artifacts] = process.argv.slice(2);
if (!base || !artifacts) {
  console.error("usage: node submit-job.mjs BASE_URL ARTIFACT_DIR");
  process.exit(2);
}
mkdirSync(artifacts, { recursive: true });

const { browser, close } = await launch();
let page;
try {
  const watched = await watchedPage(browser);
  page = watched.page;
  const problems = watched.problems;
  await signInAsDevUser(page, base, "browser-user");

  // Anything the page keeps across the wait proves it never reloaded.
  await page.evaluate(() => { window.__noReload = true; });
  await page.getByLabel("Message").fill("from the browser");
  await page.getByLabel("Work for (ms)").fill("1500");
  await page.getByRole("button", { name: "Submit" }).click();

  const job = page.locator(".job").first();
  await job.locator(".status[data-status=processing]").waitFor({ timeout: 20000 });
  await job.locator(".status[data-status=completed]").waitFor({ timeout: 30000 });
  await job.locator(".result pre", { hasText: "from the browser" }).waitFor({ timeout: 5000 });
  if (!(await page.evaluate(() => window.__noReload === true))) throw new Error("the page reloaded");
  const progress = await job.locator(".progress").getAttribute("aria-valuenow");
  if (progress !== "100") throw new Error(`progress shows ${progress}, not 100`);

  // Scheduled jobs: one an hour ahead shows as scheduled with its start and is cancelled from the page;
  // one a few seconds ahead waits, then runs. The start is typed in the person's own time zone.
  const localInput = (msAhead) => page.evaluate((ms) => {
    const at = new Date(Date.now() + ms);
    const pad = (n) => String(n).padStart(2, "0");
    return `${at.getFullYear()}-${pad(at.getMonth() + 1)}-${pad(at.getDate())}T${pad(at.getHours())}:${pad(at.getMinutes())}:${pad(at.getSeconds())}`;
  }, msAhead);
  await page.getByLabel("Message").fill("an hour from now");
  await page.getByLabel("Work for (ms)").fill("0");
  await page.getByLabel("Start at").fill(await localInput(3600 * 1000));
  await page.getByRole("button", { name: "Submit" }).click();
  const later = page.locator(".job").first();
  await later.locator(".status[data-status=scheduled]").waitFor({ timeout: 20000 });
  const laterMeta = await later.locator(".meta").textContent();
  if (!/starts /.test(laterMeta)) throw new Error(`a scheduled job's line says "${laterMeta}", not when it starts`);
  await later.getByRole("button", { name: "Cancel" }).click();
  await later.locator(".status[data-status=cancelled]").waitFor({ timeout: 20000 });
  if (!(await later.locator(".job-actions").isHidden())) throw new Error("a cancelled job still offers Cancel");

  await page.getByLabel("Message").fill("in a few seconds");
  await page.getByLabel("Start at").fill(await localInput(4000));
  await page.getByRole("button", { name: "Submit" }).click();
  const soon = page.locator(".job").first();
  await soon.locator(".result pre", { hasText: "in a few seconds" }).waitFor({ timeout: 60000 });
  const soonMeta = await soon.locator(".meta").textContent();
  if (!/scheduled for /.test(soonMeta)) throw new Error(`a job that was scheduled says "${soonMeta}"`);
  await page.getByLabel("Start at").fill("");

  // The socket drops while a job runs: the page falls back to polling and still sees it finish.
  await page.getByLabel("Message").fill("survives a dropped socket");
  await page.getByLabel("Work for (ms)").fill("4000");
  await page.getByRole("button", { name: "Submit" }).click();
  const second = page.locator(".job").first();
  await second.locator(".status[data-status=processing]").waitFor({ timeout: 20000 });
  const { webSocketConnections } = await (await fetch(`${base}/dev/resources`)).json();
  if (!webSocketConnections.length) throw new Error("the page holds no WebSocket connection");
  // As the operator would, with the local stack's own key (the stack judges @connections calls by IAM).
  const operator = "AWS4-HMAC-SHA256 Credential=local/20261202/us-east-1/execute-api/aws4_request, SignedHeaders=host, Signature=0";
  for (const id of webSocketConnections) {
    const closed = await fetch(`${base}/@connections/${encodeURIComponent(id)}`, { method: "DELETE", headers: { authorization: operator } });
    if (closed.status !== 204) throw new Error(`DeleteConnection answered ${closed.status}`);
  }
  await page.locator(".live[data-mode=polling]").waitFor({ timeout: 10000 });
  await second.locator(".status[data-status=completed]").waitFor({ timeout: 30000 });
  await second.locator(".result pre", { hasText: "survives a dropped socket" }).waitFor({ timeout: 5000 });
  await page.locator(".live[data-mode=live]").waitFor({ timeout: 15000 });
  if (!(await page.evaluate(() => window.__noReload === true))) throw new Error("the page reloaded");

  // Three at once are a batch: one row, whose progress reaches all three ended; a reload shows it as one
  // row again (its jobs are grouped), not three.
  const rowsBefore = await page.locator(".job").count();
  await page.getByLabel("Message").fill("one of three");
  await page.getByLabel("Work for (ms)").fill("300");
  await page.getByLabel("How many").fill("3");
  await page.getByRole("button", { name: "Submit" }).click();
  const batchRow = page.locator(".job.batch").first();
  await batchRow.locator(".status[data-status=completed]", { hasText: "done" }).waitFor({ timeout: 60000 });
  const batchMeta = await batchRow.locator(".meta").textContent();
  if (!/3 completed/.test(batchMeta)) throw new Error(`the batch's line says "${batchMeta}", not 3 completed`);
  if ((await batchRow.locator(".progress").getAttribute("aria-valuenow")) !== "100") throw new Error("the batch's bar is not full");
  if ((await page.locator(".job").count()) !== rowsBefore + 1) throw new Error("a batch of three added other than one row");
  await page.getByLabel("How many").fill("1");
  await page.reload();
  await page.locator(".job.batch .status[data-status=completed]").first().waitFor({ timeout: 20000 });
  if ((await page.locator(".job.batch").count()) !== 1) throw new Error("after a reload the batch is not one row");
  await page.evaluate(() => { window.__noReload = true; });

  // An image job: the picture appears inline when it is done.
  await page.locator("#kind").selectOption("image");
  await page.getByLabel("Prompt", { exact: true }).fill("a lighthouse at dusk");
  await page.getByLabel("Width").fill("512");
  await page.getByLabel("Height").fill("320");
  await page.getByRole("button", { name: "Submit" }).click();
  const imageJob = page.locator(".job").first();
  await imageJob.locator(".status[data-status=completed]").waitFor({ timeout: 30000 });
  const picture = imageJob.locator(".result img");
  await picture.waitFor({ timeout: 10000 });
  await page.waitForFunction((img) => img.complete && img.naturalWidth > 0, await picture.elementHandle(), { timeout: 10000 });
  const size = await picture.evaluate((img) => [img.naturalWidth, img.naturalHeight]);
  if (size[0] !== 512 || size[1] !== 320) throw new Error(`the image is ${size}, not 512x320`);

  await page.screenshot({ path: join(artifacts, "browser-job-completed.png"), fullPage: true });
  await page.setViewportSize({ width: 375, height: 800 });
  await page.screenshot({ path: join(artifacts, "browser-job-completed-narrow.png"), fullPage: true });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth > window.innerWidth + 1);
  if (overflow) throw new Error("the page scrolls sideways on a narrow screen");
  if (problems.length) throw new Error(problems.join("\n"));
  console.log("browser: job completed live; screenshots in", artifacts);
} catch (error) {
  if (page) await page.screenshot({ path: join(artifacts, "browser-failure.png"), fullPage: true }).catch(() => {});
  console.error(error.stack || String(error));
  process.exitCode = 1;
} finally {
  await close();
}
