// The big screen in headless Chromium (the system's, driven by playwright-core).
// Usage: node screen.mjs URL OUT_DIR DEMO_PID GMV_BINARY
// Checks that the counter rises, the chart has points, a milestone appears in
// the feed (the newest highlighted), the page fits a phone and a wall screen,
// that the stall sign shows while the demo is stopped (SIGSTOP) and clears
// when it is back (SIGCONT), and that the page reconnects by itself to a new
// demo started on the same address after the first one ended. Saves
// screenshots to OUT_DIR. Exits non-zero, saying what failed.
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { spawn } from "node:child_process";

const [url, out, pid, gmvBinary] = process.argv.slice(2);
if (!url || !out || !pid || !gmvBinary) {
  console.error("usage: node screen.mjs URL OUT_DIR DEMO_PID GMV_BINARY");
  process.exit(2);
}
let second = null;
mkdirSync(out, { recursive: true });
const executablePath = process.env.CHROMIUM ?? "/usr/bin/chromium";
const browser = await chromium.launch({ executablePath, args: ["--no-sandbox"] });
const step = (what) => console.log(`screen test: ${what}`);
try {
  const page = await browser.newPage({ viewport: { width: 1920, height: 1080 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(url);
  const gmv = async () => BigInt((await page.textContent("#gmv")).replace(/[^0-9]/g, "") || "0");

  await page.waitForFunction(() => document.getElementById("gmv").textContent !== "¥0.00", null, { timeout: 60_000 });
  const first = await gmv();
  await page.waitForTimeout(3_000);
  const later = await gmv();
  if (!(later > first)) throw new Error(`the counter did not rise: ${first} then ${later}`);
  step(`the counter rose from ${first} to ${later} fen`);

  await page.waitForFunction(() => Number(document.getElementById("chart").dataset.points) >= 3, null, { timeout: 60_000 });
  step(`the chart has ${await page.getAttribute("#chart", "data-points")} points`);

  await page.waitForSelector("#feed li", { timeout: 120_000 });
  const feed = await page.$$eval("#feed li", (lis) => lis.map((li) => li.textContent));
  step(`the milestone feed shows ${feed.length}: ${feed[0]}`);

  await page.screenshot({ path: `${out}/wall.png`, fullPage: true });
  await page.setViewportSize({ width: 390, height: 844 });
  await page.waitForTimeout(500);
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  if (overflow > 1) throw new Error(`the page is ${overflow} px wider than a phone`);
  await page.screenshot({ path: `${out}/phone.png`, fullPage: true });
  step("fits a phone (390 px) and a wall screen (1920 px); screenshots saved");

  if (await page.evaluate(() => document.body.classList.contains("stalled"))) {
    throw new Error("the stall sign shows while the stream flows");
  }
  process.kill(Number(pid), "SIGSTOP");
  try {
    await page.waitForFunction(() => document.body.classList.contains("stalled"), null, { timeout: 15_000 });
    if (!(await page.isVisible("#stall"))) throw new Error("stalled, but the sign is not visible");
    await page.screenshot({ path: `${out}/stalled.png` });
    step("the stall sign shows while the demo is stopped");
  } finally {
    process.kill(Number(pid), "SIGCONT");
  }
  await page.waitForFunction(() => !document.body.classList.contains("stalled"), null, { timeout: 60_000 });
  step("the stall sign cleared once the demo was back");

  // The demo ends; a new one starts on the same address: the page reconnects by itself.
  process.kill(Number(pid), "SIGTERM");
  await page.waitForFunction(() => document.body.classList.contains("stalled"), null, { timeout: 30_000 });
  const listen = new URL(url).host;
  second = spawn(gmvBinary, ["demo", "--seconds", "300", "--metrics-listen", listen], { stdio: "ignore" });
  await page.waitForFunction(() => !document.body.classList.contains("stalled"), null, { timeout: 90_000 });
  const before = await gmv();
  await page.waitForTimeout(3_000);
  const after = await gmv();
  if (!(after > before)) throw new Error(`after the restart the counter did not rise: ${before} then ${after}`);
  step("the page reconnected to a new demo by itself, and its counter rises");
  if (errors.length) throw new Error(`errors in the page: ${errors.join("; ")}`);
} catch (e) {
  console.error(`screen test failed: ${e.message}`);
  process.exitCode = 1;
} finally {
  second?.kill("SIGTERM");
  await browser.close();
}
