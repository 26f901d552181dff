// Tenantry console: live operation progress and small conveniences.
// Every page works without this file.
(function () {
  "use strict";

  function text(id, value) {
    var el = document.getElementById(id);
    if (el && el.textContent !== value) el.textContent = value;
  }

  function fmt(v, unit) {
    return v === null || v === undefined ? "—" : Math.round(v).toLocaleString("en") + (unit || "");
  }

  // Operation page: poll progress every second until the operation ends.
  var op = document.getElementById("op");
  if (op) {
    var url = op.getAttribute("data-progress-url");
    var samples = [];
    var poll = function () {
      fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (r) { return r.ok ? r.json() : Promise.reject(r.status); })
        .then(function (o) {
          var p = o.progress || {};
          var steps = p.steps || 0, done = p.step || 0;
          var pct = steps ? Math.floor((done * 100) / steps) : 0;
          document.getElementById("op-bar").value = pct;
          var state = document.getElementById("op-state");
          var badge = state.querySelector(".badge");
          badge.textContent = o.state;
          badge.className = "badge" + ({ succeeded: " good", failed: " bad", cancelled: " bad" }[o.state] || "");
          state.setAttribute("data-finished", String(o.finished));
          text("op-step", o.step + " (" + done + " of " + steps + ")");
          text("op-rows", fmt(p.rows_copied) + " / " + fmt(p.rows_total));
          text("op-lag", fmt(p.lag_bytes, " bytes"));
          text("op-pause", p.pause_ms === undefined || p.pause_ms === null ? "—" : fmt(p.pause_ms, " ms"));
          text("op-attempts", String(o.attempts));
          // ETA from the copy rate over the last samples.
          var now = Date.now();
          if (typeof p.rows_copied === "number") samples.push([now, p.rows_copied]);
          samples = samples.filter(function (s) { return now - s[0] < 15000; });
          if (o.finished) text("op-eta", "done");
          else if (samples.length > 1 && p.rows_total && p.rows_copied < p.rows_total) {
            var first = samples[0], last = samples[samples.length - 1];
            var rate = (last[1] - first[1]) / ((last[0] - first[0]) / 1000);
            text("op-eta", rate > 0 ? Math.ceil((p.rows_total - p.rows_copied) / rate) + " s" : "—");
          }
          var err = document.getElementById("op-error");
          if (o.error) { err.textContent = o.error; err.hidden = false; } else { err.hidden = true; }
          var cancel = document.getElementById("op-cancel");
          if (cancel && !o.cancellable) cancel.hidden = true;
          if (!o.finished) setTimeout(poll, 1000);
        })
        .catch(function () { setTimeout(poll, 3000); });
    };
    if (document.getElementById("op-state").getAttribute("data-finished") !== "true") setTimeout(poll, 500);
  }

  // Erase: the button stays disabled until the slug is typed exactly.
  var erase = document.querySelector("form[data-confirm-slug]");
  if (erase) {
    var slug = erase.getAttribute("data-confirm-slug");
    var input = erase.querySelector("#confirm");
    var button = erase.querySelector("#erase");
    var sync = function () { button.disabled = input.value.trim() !== slug; };
    input.addEventListener("input", sync);
    sync();
  }

  // A new key is selected for copying.
  var key = document.getElementById("new-key");
  if (key) { key.focus(); key.select(); }
})();
