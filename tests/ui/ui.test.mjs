// End-to-end tests of the web UI: a real `mnema serve` over a real store, driven in headless
// Debian Chromium. Screenshots of every page go to $MNEMA_UI_ARTIFACTS (default
// $CARGO_TARGET_DIR/ui-artifacts). Run by scripts/test.sh.
import { chromium } from "playwright-core";
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, mkdirSync, copyFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import assert from "node:assert/strict";

const repo = join(dirname(fileURLToPath(import.meta.url)), "../..");
const target = process.env.CARGO_TARGET_DIR || join(process.env.HOME, ".cache/mnema-target");
const bin = process.env.MNEMA_BIN || join(target, "release/mnema");
const models = process.env.MNEMA_MODELS || join(repo, "models");
const artifacts = process.env.MNEMA_UI_ARTIFACTS || join(target, "ui-artifacts");
mkdirSync(artifacts, { recursive: true });

const work = mkdtempSync(join(tmpdir(), "mnema-ui-"));
const home = join(work, "home"), data = join(work, "data");
mkdirSync(data);
const run = (cmd, args) => execFileSync(cmd, args, { stdio: ["ignore", "pipe", "pipe"] });
copyFileSync(join(repo, "samples/notes/vectorization-ideas.md"), join(data, "vectorization-ideas.md"));
run("convert", ["-size", "1000x260", "xc:white", "-font", "DejaVu-Sans", "-pointsize", "30", "-fill", "black",
  "-annotate", "+24+60", "Подписка стоит 299 рублей в месяц", "-annotate", "+24+130", "Отменить подписку можно в настройках", join(data, "settings.png")]);
run("espeak-ng", ["-v", "en", "-s", "150", "-w", join(work, "raw.wav"), "Remember to buy train tickets for Thursday morning."]);
run("sox", [join(work, "raw.wav"), "-r", "16000", "-c", "1", join(data, "tickets.wav"), "pad", "4", "0.5"]);
run(bin, ["--home", home, "--models", models, "ingest", data]);

const server = spawn(bin, ["--home", home, "--models", models, "serve", "--addr", "127.0.0.1:0", "--allow-path", work], { stdio: ["ignore", "ignore", "pipe"] });
const base = await new Promise((resolve, reject) => {
  let err = "";
  server.stderr.on("data", d => { err += d; const m = err.match(/http:\/\/([\d.:]+)\//); if (m) resolve(`http://${m[1]}`); });
  server.on("exit", c => reject(new Error(`serve exited ${c}: ${err}`)));
});

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--autoplay-policy=no-user-gesture-required"],
});
const results = [];
async function check(name, fn) {
  const page = await browser.newPage({ viewport: { width: 1100, height: 800 } });
  const errors = [];
  page.on("pageerror", e => errors.push(String(e)));
  try {
    await fn(page);
    assert.deepEqual(errors, [], "no script errors");
    results.push([name, true]);
    console.log(`ok   ${name}`);
  } catch (e) {
    results.push([name, false]);
    console.log(`FAIL ${name}: ${e.message}`);
  } finally {
    await page.screenshot({ path: join(artifacts, name.replace(/\W+/g, "-") + ".png"), fullPage: true }).catch(() => {});
    await page.close();
  }
}

try {
  await check("search shows the expected cards as you type", async page => {
    await page.goto(base + "/");
    await page.locator("#q").pressSequentially("идеи по векторизации", { delay: 20 });
    await page.locator('#results[data-query="идеи по векторизации"]').waitFor({ timeout: 15000 });
    const first = page.locator(".card").first();
    assert.match(await first.innerText(), /vectorization-ideas\.md/);
    assert.equal(await page.url(), base + "/", "no page reload while typing");
    await page.locator("#q").fill("");
    await page.locator("#q").pressSequentially("сколько стоит подписка", { delay: 20 });
    await page.locator('#results[data-query="сколько стоит подписка"]').waitFor({ timeout: 15000 });
    const card = page.locator(".card").first();
    assert.equal(await card.getAttribute("data-kind"), "image", "the screenshot ranks first");
    assert.match(await card.locator(".snippet mark").first().innerText(), /Подписка/i);
    await page.waitForFunction(() => { const i = document.querySelector('.card[data-kind="image"] img'); return i && i.complete && i.naturalWidth > 0; });
  });

  await check("item page highlights the matching OCR line", async page => {
    await page.goto(base + "/");
    await page.locator("#q").fill("отменить в настройках");
    await page.locator('#results[data-query="отменить в настройках"]').waitFor({ timeout: 15000 });
    await page.locator('.card[data-kind="image"]').first().click();
    const img = page.locator(".shot img");
    await img.waitFor();
    await page.waitForFunction(() => document.querySelector(".shot img").naturalWidth > 0);
    assert.equal(await page.locator(".box.hit").count(), 1, "only the matching line is highlighted");
    const box = await page.locator(".box.hit").first().boundingBox();
    const pic = await img.boundingBox();
    assert.ok(box && box.width > 100 && box.height > 10, `highlight box ${JSON.stringify(box)}`);
    // The second line ("Отменить…") is in the lower half of the 260 px tall image.
    assert.ok(box.y - pic.y > pic.height * 0.35, `box at ${box.y - pic.y} of ${pic.height}`);
  });

  await check("audio player starts at the hit's time", async page => {
    await page.goto(base + "/");
    await page.locator("#q").fill("train tickets Thursday");
    await page.locator('#results[data-query="train tickets Thursday"]').waitFor({ timeout: 15000 });
    await page.locator('.card[data-kind="audio"]').first().click();
    const player = page.locator("#player");
    await player.waitFor();
    await page.waitForFunction(() => document.querySelector("#player").readyState >= 1, null, { timeout: 15000 });
    const t = Number(new URL(page.url().replace("#/", "")).searchParams.get("t") ?? new URLSearchParams(page.url().split("?")[1]).get("t"));
    const cur = await player.evaluate(p => p.currentTime);
    assert.ok(t >= 3000 && t <= 5500, `hit start_ms ${t}`);
    assert.ok(Math.abs(cur * 1000 - t) < 1500, `player at ${cur}s, hit at ${t}ms`);
    assert.match(await page.locator("#segs").innerText(), /Thursday/i);
  });

  await check("resources page shows the memory budget", async page => {
    await page.goto(base + "/#/resources");
    await page.locator("#res table").first().waitFor();
    assert.match(await page.locator("#res").innerText(), /memory budget/);
    // Figures over time: after a few samples, a memory chart and the searches' stage times.
    await page.locator("#memchart").waitFor({ timeout: 15000 });
    assert.ok(await page.locator("#memchart polyline").count() === 2);
    assert.match(await page.locator("#stages").innerText(), /search/);
  });

  await check("ingest page indexes a path with progress", async page => {
    const extra = join(work, "extra");
    mkdirSync(extra);
    execFileSync("sh", ["-c", `printf '# Дача\\nПосадить картошку в мае.' > ${extra}/dacha.md`]);
    await page.goto(base + "/#/ingest");
    await page.locator("#path").fill(extra);
    await page.locator("#go").click();
    await page.locator("#log >> text=done").waitFor({ timeout: 30000 });
    assert.match(await page.locator("#log").innerText(), /indexed/);
    assert.equal(await page.locator("#bar").evaluate(b => b.value), 1);
  });

  await check("engines page compares every engine on a dropped image", async page => {
    await page.goto(base + "/#/engines");
    await page.locator("#avail").waitFor();
    await page.locator("#truth").fill("Подписка стоит 299 рублей в месяц\nОтменить подписку можно в настройках");
    await page.locator("#img").setInputFiles(join(data, "settings.png"));
    await page.locator('.engine[data-engine="paddle-ocr"]').waitFor({ timeout: 30000 });
    const tess = await page.locator('.engine[data-engine="tesseract"]').innerText();
    assert.match(tess, /Отменить подписку/);
    assert.match(tess, /CER 0\.0\d\d/);
    assert.match(await page.locator('.engine[data-engine="paddle-ocr"]').innerText(), /ms · peak RSS/);
    assert.match(await page.locator("#avail").innerText(), /apple-vision.*unavailable/);
  });

  await check("token login: /?token= sets the cookie and the page then works", async page => {
    const token = "ui-test-token-0123456789";
    const guarded = spawn(bin, ["--home", home, "--models", models, "serve", "--addr", "127.0.0.1:0"],
      { stdio: ["ignore", "ignore", "pipe"], env: { ...process.env, MNEMA_TOKEN: token } });
    try {
      const base2 = await new Promise((resolve, reject) => {
        let err = "";
        guarded.stderr.on("data", d => { err += d; const m = err.match(/http:\/\/([\d.:]+)\//); if (m) resolve(`http://${m[1]}`); });
        guarded.on("exit", c => reject(new Error(`serve exited ${c}: ${err}`)));
      });
      assert.equal((await page.goto(base2 + "/")).status(), 401, "no token, no page");
      await page.goto(base2 + `/?token=${token}`);
      assert.equal(page.url(), base2 + "/", "the token leaves the address bar");
      await page.locator("#q").fill("подписка");
      await page.locator('#results[data-query="подписка"] .card').first().waitFor({ timeout: 15000 });
      await page.waitForFunction(() => { const i = document.querySelector('.card[data-kind="image"] img'); return i && i.complete && i.naturalWidth > 0; });
    } finally {
      guarded.kill();
    }
  });

  await check("layout fits a phone screen", async page => {
    await page.setViewportSize({ width: 390, height: 844 });
    await page.goto(base + "/");
    await page.locator("#q").fill("подписка");
    await page.locator('#results[data-query="подписка"] .card').first().waitFor({ timeout: 15000 });
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 1, `horizontal overflow ${overflow}px`);
  });
} finally {
  await browser.close();
  server.kill();
}
const failed = results.filter(r => !r[1]).length;
console.log(`${results.length - failed} passed, ${failed} failed; screenshots in ${artifacts}`);
process.exit(failed ? 1 : 0);
