// Rakkr's own script: live meters over server-sent events.
//
// An element with `data-live-src` names an event stream; each `meters` event
// carries the element's new content, rendered and escaped by the server like
// every htmx swap. Pages work without this script (they show the last
// telemetry frame); it only makes the levels live.
(function () {
  "use strict";

  function say(text) {
    var state = document.getElementById("live-state");
    if (state) state.textContent = text;
  }

  function connect(el) {
    var source = new EventSource(el.getAttribute("data-live-src"));
    source.addEventListener("open", function () {
      say("Connected; waiting for the node's live levels…");
    });
    source.addEventListener("meters", function (event) {
      el.innerHTML = event.data;
      el.setAttribute("data-live", "on");
      say("Live: about five updates a second.");
    });
    source.addEventListener("error", function () {
      el.setAttribute("data-live", "off");
      say("Live levels interrupted; reconnecting…");
    });
    window.addEventListener("pagehide", function () {
      source.close();
    });
  }

  function start() {
    document.querySelectorAll("[data-live-src]").forEach(connect);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
