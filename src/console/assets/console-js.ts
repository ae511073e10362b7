/**
 * console.js: live updates and confirmations, nothing else. It fetches the page's `<main>`
 * (header `x-console-fragment: 1`) and swaps it in, unless a form field has focus or holds text,
 * or a full message is open; it says when it last updated, or what went wrong. One request at a
 * time, never two: the next starts 5 s after the last answer, or 4 times as long as that answer
 * took if it was slow, and backs off (10, 20, 40, up to 60 s) after a failure, so that a slow
 * console is not asked more often by many open tabs. Only a 200 HTML answer replaces `<main>`.
 * Buttons with `data-confirm` ask first. Served from the console itself: no external resource.
 */
export const consoleJs = String.raw`'use strict';
(function () {
  var INTERVAL_MS = 5000;
  var SLOW_FACTOR = 4;
  var MAX_BACKOFF_MS = 60000;
  var TIMEOUT_MS = 30000;
  var main = document.getElementById('main');
  var live = document.getElementById('live');
  var lastUpdate = Date.now();
  var dueAt = Date.now() + INTERVAL_MS;
  var slow = false;
  var failures = 0;
  var problem = '';
  var busy = false;
  var timer = null;

  function seconds(ms) {
    return Math.max(0, Math.round(ms / 1000)) + ' s';
  }

  function secondsAgo() {
    return Date.now() - lastUpdate < 1000 ? 'just now' : seconds(Date.now() - lastUpdate) + ' ago';
  }

  function editing() {
    var active = document.activeElement;
    if (active && main && main.contains(active) && /^(INPUT|TEXTAREA|SELECT)$/.test(active.tagName)) return true;
    var fields = main ? main.querySelectorAll('textarea, input[type=text], input[type=password], input:not([type])') : [];
    for (var i = 0; i < fields.length; i++) if (fields[i].value !== '') return true;
    return false;
  }

  function reading() {
    return Boolean(main && main.querySelector('details[open]'));
  }

  function say() {
    if (!live) return;
    var next = busy ? 'now' : 'in ' + seconds(dueAt - Date.now());
    if (problem) live.textContent = problem + ', retrying ' + next + ' (last updated ' + secondsAgo() + ')';
    else if (editing()) live.textContent = 'Live updates paused while you type (updated ' + secondsAgo() + ')';
    else if (reading()) live.textContent = 'Live updates paused while a full message is open (updated ' + secondsAgo() + ')';
    else live.textContent = 'Live: updated ' + secondsAgo() + (slow ? ', next ' + next + ' (the console answers slowly)' : '');
    live.className = problem ? 'live lost' : 'live muted';
  }

  /** How long to wait after an answer that took tookMs: longer when it was slow, longer still after failures. */
  function delayAfter(tookMs) {
    var delay = Math.max(INTERVAL_MS, SLOW_FACTOR * tookMs);
    slow = delay > INTERVAL_MS;
    if (failures > 0) delay = Math.max(delay, Math.min(MAX_BACKOFF_MS, INTERVAL_MS * Math.pow(2, failures)));
    return delay;
  }

  function wakeAt(at) {
    clearTimeout(timer);
    timer = setTimeout(tick, Math.max(0, at - Date.now()));
  }

  /** Fetches when due, unless a request is out or the page should not change now (then checks again in a second). */
  function tick() {
    if (busy) return;
    if (Date.now() < dueAt) return wakeAt(dueAt);
    if (document.hidden || editing() || reading()) {
      say();
      return wakeAt(Date.now() + 1000);
    }
    refresh();
  }

  /** The answer's HTML, or a rejection that says what came back instead. */
  function pageOf(response) {
    var type = (response.headers.get('content-type') || '').split(';')[0].trim();
    if (response.status === 200 && type === 'text/html') return response.text();
    var refused = new Error('The console answered HTTP ' + response.status + (type && type !== 'text/html' ? ' (' + type + ')' : ''));
    refused.answered = true;
    throw refused;
  }

  function refresh() {
    busy = true;
    var started = Date.now();
    var abort = typeof AbortController === 'function' ? new AbortController() : null;
    var giveUp = setTimeout(function () {
      if (abort) abort.abort();
    }, TIMEOUT_MS);
    say();
    fetch(location.href, { headers: { 'x-console-fragment': '1' }, credentials: 'same-origin', cache: 'no-store', signal: abort ? abort.signal : undefined })
      .then(pageOf)
      .then(
        function (text) {
          if (!editing() && !reading()) {
            main.innerHTML = text;
            lastUpdate = Date.now();
          }
          failures = 0;
          problem = '';
        },
        function (error) {
          failures += 1;
          problem = error && error.answered ? error.message : 'Connection lost';
        }
      )
      .then(function () {
        clearTimeout(giveUp);
        busy = false;
        dueAt = Date.now() + delayAfter(Date.now() - started);
        wakeAt(dueAt);
        say();
      });
  }

  document.addEventListener('submit', function (event) {
    var button = event.submitter;
    var message = (button && button.getAttribute('data-confirm')) || event.target.getAttribute('data-confirm');
    if (message && !window.confirm(message)) event.preventDefault();
  });

  document.addEventListener('change', function (event) {
    var form = event.target && event.target.form;
    if (form && form.hasAttribute('data-autosubmit') && event.target.tagName === 'SELECT') form.requestSubmit();
  });

  if (main) {
    say();
    wakeAt(dueAt);
    setInterval(say, 1000);
    document.addEventListener('visibilitychange', function () {
      if (!document.hidden) tick();
    });
  }
})();
`;
