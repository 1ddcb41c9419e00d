// Live updates of the status page. The server's event stream (/ui/events) says
// "change" when what the pages show may have changed; the page then re-reads
// itself and swaps its <main> in place (no reload, no flicker). Once more a
// refresh interval later too, for counts the server caches. Without
// EventSource, or while the stream is down, the page re-reads itself every
// data-refresh seconds, as it would with JavaScript off (<noscript> refresh).
(function () {
  "use strict";
  var me = document.currentScript;
  var every = Number(me.dataset.refresh) * 1000;
  if (!every) { return; }
  var busy = false, again = false, trailing = null;

  function editing() {
    var a = document.activeElement;
    return a && a.form && document.querySelector("main").contains(a);
  }

  function refresh() {
    if (busy) { again = true; return; }
    if (editing()) { return; } // never replace a form someone is filling in
    busy = true;
    fetch(location.href, { credentials: "same-origin", cache: "no-store" })
      .then(function (r) {
        if (r.redirected || !r.ok) { location.reload(); throw new Error("reload"); }
        return r.text();
      })
      .then(function (html) {
        var doc = new DOMParser().parseFromString(html, "text/html");
        var main = doc.querySelector("main"), now = doc.querySelector("nav .muted");
        if (main) { document.querySelector("main").replaceWith(main); }
        if (now) { document.querySelector("nav .muted").replaceWith(now); }
        document.documentElement.dataset.liveUpdates = String(Number(document.documentElement.dataset.liveUpdates || 0) + 1);
      })
      .catch(function () {})
      .finally(function () {
        busy = false;
        if (again) { again = false; setTimeout(refresh, 250); }
      });
  }

  var poll = null;
  function polling(on) {
    if (on && !poll) { poll = setInterval(refresh, every); }
    if (!on && poll) { clearInterval(poll); poll = null; }
  }

  if (!window.EventSource) { polling(true); return; }
  var events = new EventSource(me.dataset.events);
  events.addEventListener("change", function () {
    refresh();
    clearTimeout(trailing);
    trailing = setTimeout(refresh, every + 500);
  });
  events.onopen = function () { polling(false); };
  events.onerror = function () { polling(true); }; // it reconnects by itself
})();
