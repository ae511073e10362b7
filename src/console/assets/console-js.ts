/**
 * console.js: live updates and confirmations, nothing else. Every few seconds it fetches the
 * page's `<main>` (header `x-console-fragment: 1`) and swaps it in, unless a form field has
 * focus or holds text, or a full message is open; it says when it last updated, or that the
 * connection is lost. Buttons with `data-confirm` ask first. Served from the console itself:
 * no external resource.
 */
export const consoleJs = String.raw`'use strict';
(function () {
  var INTERVAL_MS = 5000;
  var main = document.getElementById('main');
  var live = document.getElementById('live');
  var lastUpdate = Date.now();
  var lost = false;
  var busy = false;

  function secondsAgo() {
    var s = Math.round((Date.now() - lastUpdate) / 1000);
    return s < 1 ? 'just now' : s + ' s ago';
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
    if (lost) live.textContent = 'Connection lost, retrying (last updated ' + secondsAgo() + ')';
    else if (editing()) live.textContent = 'Live updates paused while you type (updated ' + secondsAgo() + ')';
    else if (reading()) live.textContent = 'Live updates paused while a full message is open (updated ' + secondsAgo() + ')';
    else live.textContent = 'Live: updated ' + secondsAgo();
    live.className = lost ? 'live lost' : 'live muted';
  }

  function refresh() {
    if (busy || !main || document.hidden || editing() || reading()) return say();
    busy = true;
    fetch(location.href, { headers: { 'x-console-fragment': '1' }, credentials: 'same-origin', cache: 'no-store' })
      .then(function (response) {
        if (response.status >= 500) throw new Error('HTTP ' + response.status);
        return response.text();
      })
      .then(function (text) {
        if (!editing() && !reading()) {
          main.innerHTML = text;
          lastUpdate = Date.now();
        }
        lost = false;
      })
      .catch(function () {
        lost = true;
      })
      .then(function () {
        busy = false;
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
    setInterval(refresh, INTERVAL_MS);
    setInterval(say, 1000);
    document.addEventListener('visibilitychange', function () {
      if (!document.hidden) refresh();
    });
  }
})();
`;
