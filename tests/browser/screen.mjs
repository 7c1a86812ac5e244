// The big screen in a real browser: headless Chromium (over the DevTools
// protocol) or Firefox (over WebDriver BiDi), the system's, driven by
// puppeteer-core. Usage: node screen.mjs BROWSER URL OUT_DIR DEMO_PID GMV_BINARY
// where BROWSER is chrome or firefox and its executable is $BROWSER_PATH.
// Checks that the counter rises, the chart has points, a milestone appears in
// the feed, the page fits a phone and a wall screen, that the stall sign shows
// while the demo is stopped (SIGSTOP) and clears when it is back (SIGCONT),
// and that the page reconnects by itself to a new demo started on the same
// address after the first one ended. Saves screenshots to OUT_DIR. Exits
// non-zero, saying what failed.
import puppeteer from "puppeteer-core";
import { mkdirSync } from "node:fs";
import { spawn } from "node:child_process";
import { setTimeout as sleep } from "node:timers/promises";

const [kind, url, out, pid, gmvBinary] = process.argv.slice(2);
const executablePath = process.env.BROWSER_PATH;
if (!["chrome", "firefox"].includes(kind) || !url || !out || !pid || !gmvBinary || !executablePath) {
  console.error("usage: BROWSER_PATH=… node screen.mjs chrome|firefox URL OUT_DIR DEMO_PID GMV_BINARY");
  process.exit(2);
}
let second = null;
mkdirSync(out, { recursive: true });
// Chromium's sandbox needs user namespaces, which containers often lack.
const args = kind === "chrome" ? ["--no-sandbox"] : [];
const browser = await puppeteer.launch({ browser: kind, executablePath, headless: true, args });
const step = (what) => console.log(`screen test (${kind}): ${what}`);
const until = (page, fn, timeout, ...args) => page.waitForFunction(fn, { timeout, polling: 100 }, ...args);
const stalled = () => document.body.classList.contains("stalled");
try {
  const page = await browser.newPage();
  await page.setViewport({ width: 1920, height: 1080 });
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(url);
  const gmv = async () => BigInt((await page.$eval("#gmv", (e) => e.textContent)).replace(/[^0-9]/g, "") || "0");

  await until(page, () => document.getElementById("gmv").textContent !== "¥0.00", 60_000);
  const first = await gmv();
  await sleep(3_000);
  const later = await gmv();
  if (!(later > first)) throw new Error(`the counter did not rise: ${first} then ${later}`);
  step(`the counter rose from ${first} to ${later} fen`);

  await until(page, () => Number(document.getElementById("chart").dataset.points) >= 3, 60_000);
  step(`the chart has ${await page.$eval("#chart", (e) => e.dataset.points)} points`);

  await page.waitForSelector("#feed li", { timeout: 120_000 });
  const feed = await page.$$eval("#feed li", (lis) => lis.map((li) => li.textContent));
  step(`the milestone feed shows ${feed.length}: ${feed[0]}`);

  await page.screenshot({ path: `${out}/wall.png`, fullPage: true });
  await page.setViewport({ width: 390, height: 844 });
  await sleep(500);
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  if (overflow > 1) throw new Error(`the page is ${overflow} px wider than a phone`);
  await page.screenshot({ path: `${out}/phone.png`, fullPage: true });
  step("fits a phone (390 px) and a wall screen (1920 px); screenshots saved");

  if (await page.evaluate(stalled)) throw new Error("the stall sign shows while the stream flows");
  process.kill(Number(pid), "SIGSTOP");
  try {
    await until(page, stalled, 15_000);
    await page.waitForSelector("#stall", { visible: true, timeout: 2_000 }).catch(() => {
      throw new Error("stalled, but the sign is not visible");
    });
    await page.screenshot({ path: `${out}/stalled.png` });
    step("the stall sign shows while the demo is stopped");
  } finally {
    process.kill(Number(pid), "SIGCONT");
  }
  await until(page, () => !document.body.classList.contains("stalled"), 60_000);
  step("the stall sign cleared once the demo was back");

  // The demo ends; a new one starts on the same address: the page reconnects by itself.
  const ended = await gmv();
  process.kill(Number(pid), "SIGTERM");
  await until(page, stalled, 30_000);
  const listen = new URL(url).host;
  second = spawn(gmvBinary, ["demo", "--seconds", "300", "--metrics-listen", listen], { stdio: "ignore" });
  await until(page, () => !document.body.classList.contains("stalled"), 90_000);
  // The new demo's sale starts from zero: the counter drops to it at once
  // (it glides only upwards), then rises with it.
  await until(page, (e) => BigInt(document.getElementById("gmv").textContent.replace(/[^0-9]/g, "")) < BigInt(e), 30_000, String(ended));
  const before = await gmv();
  await sleep(3_000);
  const after = await gmv();
  if (!(after > before)) throw new Error(`after the restart the counter did not rise: ${before} then ${after}`);
  step("the page reconnected to a new demo by itself, and its counter rises");
  if (errors.length) throw new Error(`errors in the page: ${errors.join("; ")}`);
} catch (e) {
  console.error(`screen test (${kind}) failed: ${e.message}`);
  process.exitCode = 1;
} finally {
  second?.kill("SIGTERM");
  await browser.close();
}
