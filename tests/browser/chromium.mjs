// The one way the browser tests start Chromium: Debian's binary, a fresh profile each run, and flags that
// keep it from reaching for the network this machine lacks. `close()` also removes the profile.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

export async function launch() {
  const profile = mkdtempSync(join(tmpdir(), "jobpipe-chromium-"));
  const browser = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    viewport: { width: 1100, height: 900 },
    args: [
      "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
  });
  return {
    browser,
    async close() {
      await browser.close();
      rmSync(profile, { recursive: true, force: true });
    },
  };
}

/** A new page whose errors are collected: uncaught exceptions, and console errors unless `expected`
 * says a message is one the run asks for. `problems` lists them; a test fails when it is not empty. */
export async function watchedPage(browser, expected = () => false) {
  const page = await browser.newPage();
  const problems = [];
  page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
  page.on("console", (message) => {
    if (message.type() === "error" && !expected(message.text())) problems.push(`console: ${message.text()}`);
  });
  return { page, problems };
}

/** Opens the local stack's UI at `base` and signs in as dev user `user`, until the page is live. */
export async function signInAsDevUser(page, base, user) {
  await page.goto(base);
  await page.getByLabel("User").fill(user);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.locator("#kind option[value=echo]").waitFor({ state: "attached", timeout: 15000 });
  await page.locator(".live[data-mode=live]").waitFor({ timeout: 15000 });
}
