// smsdora dashboard: live updates and the copy buttons, nothing else.
// Every page works without this file (reload to see news).
//
// A page with <main data-live="/dashboard/live?..."> opens one EventSource
// to it; each event is a rendered row or panel whose id names the element
// it replaces (or, for a new row, a `data-into` table body it is put at
// the top of). The browser resumes with Last-Event-ID by itself.
(function () {
  "use strict";
  function apply(html) {
    var box = document.createElement("template");
    box.innerHTML = html.trim();
    var node = box.content.firstElementChild;
    if (!node || !node.id) return;
    var old = document.getElementById(node.id);
    if (old) { old.replaceWith(node); return; }
    var into = node.getAttribute("data-into");
    var target = into && document.getElementById(into);
    if (target) target.prepend(node);
  }
  function live() {
    var main = document.querySelector("main[data-live]");
    if (!main || !window.EventSource) return;
    var source = new EventSource(main.getAttribute("data-live"));
    source.addEventListener("html", function (e) { apply(e.data); });
    document.documentElement.setAttribute("data-live-state", "connecting");
    source.onopen = function () {
      document.documentElement.setAttribute("data-live-state", "open");
    };
  }
  function copyButtons() {
    document.querySelectorAll("button[data-copy]").forEach(function (button) {
      button.hidden = false;
      button.addEventListener("click", function () {
        var text = document.getElementById(button.getAttribute("data-copy")).textContent;
        navigator.clipboard.writeText(text.trim()).then(function () {
          button.textContent = "Copied";
        });
      });
    });
  }
  document.addEventListener("DOMContentLoaded", function () { live(); copyButtons(); });
})();
