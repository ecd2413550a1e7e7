#!/usr/bin/env node
// The booking page in a real browser (issue 9, "Show it"): Debian's chromium driven by playwright-core.
//
//   node book.mjs [--timeout-ms N] CONFIG_JSON
//
// CONFIG_JSON: {"origin": "http://127.0.0.1:PORT", "bookPath": "/book/{tenant}/{host_ref}/{slug}",
//               "agendaPath": "/agenda/{host_secret}", "agendaBooking": "bkg_…",
//               "timezoneId": "America/New_York", "dstDate": "YYYY-MM-DD", "dstHeading": "Sunday 31 October 2027",
//               "dstTimes": ["04:00", …]}
// Passes when:
//  1. a visitor whose browser is in `timezoneId` opens the booking page without `tz`: the page's script shows it
//     again in that zone (the URL gets `tz`, the page says so);
//  2. the visitor picks the first free time, fills in the form (keyboard-reachable labelled fields), submits, and
//     lands on the confirmation page (/manage/…) that shows the booked time and the status;
//  3. the confirmation's join link opens the join page, whose script checks the link (its status line changes);
//  4. a second visitor (a browser context of its own) no longer sees that time;
//  5. the page of `dstDate` (a DST change of the schedule's zone) lists exactly `dstTimes` under `dstHeading`;
//  6. the host agenda's Join button (row `agendaBooking` of `agendaPath`) opens the join page, which joins as the
//     host (duetCall.join.role) through the host-secret join endpoint;
//  7. axe-core finds no serious or critical violation on the booking page, the form, the confirmation page and the
//     agenda, and no page reports a Content-Security-Policy violation.
// Prints one JSON line on stdout ({"ok":true|false,…}); exits 0 on success, 1 on failure, 2 on bad usage.

import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';

import { Failure, cspReport, launch, newPage, parseConfigArgs, run } from './harness.mjs';

const { timeoutMs, config } = parseConfigArgs(
  'book.mjs',
  'The booking page in chromium: zone detection, booking, confirmation, join link, DST day, axe-core.',
  ['origin', 'bookPath', 'timezoneId', 'dstDate', 'dstHeading', 'dstTimes', 'agendaPath', 'agendaBooking'],
);
const require = createRequire(import.meta.url);
const AXE = await readFile(require.resolve('axe-core/axe.min.js'), 'utf8');

/** A page in a context whose clock and Intl zone are `timezoneId` (see harness newPage for the logging). */
async function visitor(ctx, label, timezoneId) {
  const page = await newPage(ctx, label, { timezoneId });
  return page;
}

/** axe-core on the current document (evaluated through the DevTools protocol: the page's CSP does not apply). */
async function axe(page, what) {
  await page.evaluate(AXE);
  const result = await page.evaluate(async () => {
    // eslint-disable-next-line no-undef
    const r = await axe.run(document, { resultTypes: ['violations'] });
    return r.violations.map((v) => ({ id: v.id, impact: v.impact, nodes: v.nodes.length, help: v.help }));
  });
  const bad = result.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  if (bad.length) throw new Failure(`axe-core on ${what}: ${JSON.stringify(bad)}`);
  return result;
}

/** The `HH:MM` of the slot links under the heading `heading`. */
function timesUnder(heading) {
  const h = [...document.querySelectorAll('h3')].find((x) => x.textContent === heading);
  if (!h) return null;
  const out = [];
  for (let el = h.nextElementSibling; el && el.tagName !== 'H3'; el = el.nextElementSibling) {
    for (const a of el.querySelectorAll('a.slot')) out.push(a.textContent);
  }
  return out;
}

run('book', timeoutMs, async (ctx) => {
  await launch(ctx);
  const { origin, bookPath, timezoneId } = config;
  const axeReports = {};

  // 1. First visit without `tz`: the script shows the page in the browser's zone.
  ctx.phase = 'opening the booking page';
  const page = await visitor(ctx, 'visitor', timezoneId);
  await page.goto(`${origin}${bookPath}`, { waitUntil: 'load', timeout: 15000 });
  await page.waitForURL((u) => new URL(u).searchParams.get('tz') === timezoneId, { timeout: 10000 });
  await page.waitForLoadState('load');
  const shown = await page.evaluate(() => document.getElementById('zone-note').dataset.tz);
  if (shown !== timezoneId) throw new Failure(`the page shows zone ${shown}, the browser is in ${timezoneId}`);
  axeReports.booking = await axe(page, 'the booking page');

  // 2. Pick the first free time, fill in the form, submit.
  ctx.phase = 'booking';
  const first = page.locator('a.slot').first();
  const slot = { start: await first.getAttribute('data-start'), label: await first.textContent() };
  await first.click();
  await page.waitForSelector('form.book');
  axeReports.form = await axe(page, 'the booking form');
  await page.getByLabel('Name').fill('Playwright Guest');
  await page.getByLabel('Email').fill('guest@example.org');
  await page.getByLabel(/Note for/).fill('Looking forward to it.');
  await Promise.all([
    page.waitForNavigation({ timeout: 15000 }),
    page.getByRole('button', { name: /^Book/ }).click(),
  ]);
  if (!/\/manage\/[^/?]+$/.test(new URL(page.url()).pathname)) {
    const text = await page.evaluate(() => document.body.innerText);
    throw new Failure(`the form post did not land on the confirmation: ${page.url()}: ${text.slice(0, 500)}`);
  }
  const confirmation = await page.evaluate(() => ({
    when: document.getElementById('when').textContent,
    status: document.querySelector('.status').textContent,
    join: document.getElementById('join-link').getAttribute('href'),
    ics: document.getElementById('ics-link').getAttribute('href'),
  }));
  if (!confirmation.when.includes(slot.label)) {
    throw new Failure(`the confirmation shows ${confirmation.when}, the slot was ${slot.label}`);
  }
  if (!/Confirmed|Waiting for confirmation/.test(confirmation.status)) throw new Failure(`status: ${confirmation.status}`);
  axeReports.manage = await axe(page, 'the confirmation page');

  // 3. The join link opens the join page, whose script checks the link.
  ctx.phase = 'opening the join link';
  const r = await page.goto(`${origin}${confirmation.join}`, { waitUntil: 'load', timeout: 15000 });
  if (!r || !r.ok()) throw new Failure(`GET ${confirmation.join} answered ${r ? r.status() : 'nothing'}`);
  await page.waitForFunction(() => {
    const s = document.getElementById('status');
    return s && s.textContent && s.textContent !== 'Checking your meeting link…';
  }, null, { timeout: 10000 });
  const joinStatus = await page.evaluate(() => document.getElementById('status').textContent);

  // 4. A second visitor does not see the booked time.
  ctx.phase = 'second visitor';
  const second = await visitor(ctx, 'second', timezoneId);
  const secondLoad = await second.goto(`${origin}${bookPath}?tz=${encodeURIComponent(timezoneId)}`, { waitUntil: 'load', timeout: 15000 });
  const pagePolicy = secondLoad ? secondLoad.headers()['content-security-policy'] : null;
  const starts = await second.evaluate(() => [...document.querySelectorAll('a.slot')].map((a) => a.dataset.start));
  if (starts.includes(slot.start)) throw new Failure(`the second visitor still sees ${slot.start}`);
  if (!starts.length) throw new Failure('the second visitor sees no free time at all');

  // 5. The DST day, in the browser's zone.
  ctx.phase = 'DST day';
  const dst = await visitor(ctx, 'dst', timezoneId);
  await dst.goto(`${origin}${bookPath}?from=${config.dstDate}`, { waitUntil: 'load', timeout: 15000 });
  await dst.waitForURL((u) => new URL(u).searchParams.get('tz') === timezoneId, { timeout: 10000 });
  await dst.waitForLoadState('load');
  const dstTimes = await dst.evaluate(timesUnder, config.dstHeading);
  if (JSON.stringify(dstTimes) !== JSON.stringify(config.dstTimes)) {
    throw new Failure(`${config.dstHeading}: the page lists ${JSON.stringify(dstTimes)}, expected ${JSON.stringify(config.dstTimes)}`);
  }

  // 6. The host agenda (axe-core too): Join opens the join page, which joins as the host with the host secret.
  ctx.phase = 'host agenda';
  const host = await visitor(ctx, 'host', timezoneId);
  await host.goto(`${origin}${config.agendaPath}`, { waitUntil: 'load', timeout: 15000 });
  axeReports.agenda = await axe(host, 'the host agenda');
  const join = host.locator(`tr[data-booking="${config.agendaBooking}"] a`, { hasText: 'Join' });
  await Promise.all([host.waitForNavigation({ timeout: 15000 }), join.click()]);
  await host.getByRole('button', { name: 'Join' }).click({ timeout: 15000 });
  await host.waitForFunction(() => window.duetCall && ['waiting', 'connecting'].includes(window.duetCall.state), null, { timeout: 15000 });
  const agenda = await host.evaluate(() => ({ state: window.duetCall.state, role: window.duetCall.join.role }));

  // 7. No CSP violation on any page.
  const csp = await cspReport(ctx);
  return { slot, pagePolicy, agenda, confirmation: { when: confirmation.when, status: confirmation.status }, joinStatus, dstTimes, axe: axeReports, csp };
});
