// Tollgate UI: progressive enhancement only; every page works without this file.
(function () {
  "use strict";
  // Forms marked data-confirm ask before submitting (promote, rollback, ...).
  document.addEventListener("submit", function (ev) {
    var f = ev.target;
    var msg = f && f.getAttribute && f.getAttribute("data-confirm");
    if (msg && !window.confirm(msg)) { ev.preventDefault(); }
  });
  // <input data-filter="CSS selector of rows"> hides the rows that do not match as you type.
  document.addEventListener("input", function (ev) {
    var el = ev.target;
    var sel = el && el.getAttribute && el.getAttribute("data-filter");
    if (!sel) { return; }
    var q = el.value.toLowerCase();
    var rows = document.querySelectorAll(sel);
    rows.forEach(function (r) {
      r.hidden = q !== "" && r.textContent.toLowerCase().indexOf(q) === -1;
    });
  });
  // Relative times refresh without reloading: <time data-ago datetime="unix seconds">.
  function ago() {
    var now = Date.now() / 1000;
    document.querySelectorAll("time[data-ago]").forEach(function (t) {
      var s = parseInt(t.getAttribute("datetime"), 10);
      if (!s) { return; }
      var d = Math.max(0, Math.floor(now - s));
      t.textContent = d < 60 ? d + " s ago" : d < 3600 ? Math.floor(d / 60) + " min ago"
        : d < 86400 ? Math.floor(d / 3600) + " h ago" : Math.floor(d / 86400) + " d ago";
    });
  }
  setInterval(ago, 5000);
})();
