// The web UI served from a second origin, as a deployed frontend is (its own host, the API elsewhere):
// a person signs in with the API URLs and a token, submits a job and sees it complete; then the page
// itself reads, lists and cancels through the API across origins, so every method's CORS preflight and
// the exposed headers are exercised as a browser enforces them.
// Usage: node cross-origin.mjs FRONTEND_URL API_URL WS_URL TOKEN ARTIFACT_DIR
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { launch, watchedPage } from "./chromium.mjs";

const [frontend, api, ws, token, artifacts] = process.argv.slice(2);
if (!frontend || !api || !ws || !token || !artifacts) {
  console.error("usage: node cross-origin.mjs FRONTEND_URL API_URL WS_URL TOKEN ARTIFACT_DIR");
  process.exit(2);
}
mkdirSync(artifacts, { recursive: true });

const { browser, close } = await launch();
let page;
try {
  // Answers the run asks for are logged as failed loads: the frontend's origin has no /dev/resources
  // (the 404 tells the page it is deployed), and a job that already started cannot be cancelled (409).
  const watched = await watchedPage(browser, (text) => /status of (404|409)/.test(text));
  page = watched.page;
  const problems = watched.problems;

  await page.goto(frontend);
  await page.getByLabel("HTTP API URL").fill(api);
  await page.getByLabel("WebSocket URL").fill(ws);
  await page.getByLabel("Token").fill(token);
  await page.locator("#token-sign-in").getByRole("button", { name: "Sign in" }).click();
  await page.locator("#kind option[value=echo]").waitFor({ state: "attached", timeout: 30000 });

  await page.getByLabel("Message").fill("from another origin");
  await page.getByLabel("Work for (ms)").fill("500");
  await page.getByRole("button", { name: "Submit" }).click();
  const job = page.locator(".job").first();
  await job.locator(".status[data-status=completed]").waitFor({ timeout: 60000 });
  await job.locator(".result pre", { hasText: "from another origin" }).waitFor({ timeout: 10000 });

  // The page's own fetches, cross-origin: each must reach the API and be readable by the script.
  const calls = await page.evaluate(async ({ api, token }) => {
    const auth = { authorization: `Bearer ${token}` };
    const out = {};
    const submitted = await fetch(`${api}/jobs`, {
      method: "POST",
      headers: { ...auth, "content-type": "application/json", "idempotency-key": `cors-${Date.now()}` },
      body: JSON.stringify({ kind: "echo", input: { sleepMs: 5000 } }),
    });
    const body = await submitted.json();
    out.submit = { status: submitted.status, location: submitted.headers.get("location"), jobId: body.jobId };
    const cancelled = await fetch(`${api}/jobs/${body.jobId}`, { method: "DELETE", headers: auth });
    out.cancel = { status: cancelled.status, body: await cancelled.json() };
    const read = await fetch(`${api}/jobs/${body.jobId}`, { headers: auth });
    out.read = { status: read.status, body: await read.json() };
    const listed = await fetch(`${api}/jobs`, { headers: auth });
    out.list = { status: listed.status, body: await listed.json() };
    return out;
  }, { api, token });

  const { submit, cancel, read, list } = calls;
  if (submit.status !== 202 || !submit.jobId) throw new Error(`submit: ${JSON.stringify(submit)}`);
  if (submit.location !== `/jobs/${submit.jobId}`) throw new Error(`Location not exposed: ${JSON.stringify(submit)}`);
  // Cancelled while queued, or too late because it already started: either way the answer was readable.
  if (![200, 409].includes(cancel.status)) throw new Error(`cancel: ${JSON.stringify(cancel)}`);
  if (read.status !== 200 || read.body.jobId !== submit.jobId) throw new Error(`read: ${JSON.stringify(read)}`);
  if (cancel.status === 200 && read.body.status !== "cancelled") throw new Error(`read after cancel: ${JSON.stringify(read)}`);
  const ids = (list.body.jobs || []).map((j) => j.jobId);
  if (list.status !== 200 || !ids.includes(submit.jobId)) throw new Error(`list: ${JSON.stringify(list)}`);
  if (problems.length) throw new Error(problems.join("\n"));

  await page.screenshot({ path: join(artifacts, "browser-cross-origin.png"), fullPage: true });
  console.log(`ok: submitted, completed in the UI; cancel answered ${cancel.status}; read and listed across origins`);
} catch (error) {
  if (page) await page.screenshot({ path: join(artifacts, "browser-cross-origin-failure.png"), fullPage: true }).catch(() => {});
  console.error(error.stack || String(error));
  process.exitCode = 1;
} finally {
  await close();
}
