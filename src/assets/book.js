// The booking pages' only script (src/booking/pages.rs), served as /book.js so the pages' CSP can say
// script-src 'self'. Progressive enhancement: on a first visit (no `tz` in the URL) it shows the page again in the
// browser's own time zone. Everything else works without it.
(() => {
  'use strict';
  const note = document.getElementById('zone-note');
  if (!note) return;
  const url = new URL(location.href);
  if (url.searchParams.has('tz')) return;
  let zone = '';
  try { zone = Intl.DateTimeFormat().resolvedOptions().timeZone || ''; } catch (_) { return; }
  if (!zone || zone === note.dataset.tz) return;
  // Only a zone the server offers (the selector's options): never a detour to an error page.
  const select = document.getElementById('tz');
  if (!select || ![...select.options].some((o) => o.value === zone)) return;
  url.searchParams.set('tz', zone);
  location.replace(url.toString());
})();
