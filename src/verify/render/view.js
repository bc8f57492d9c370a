(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("span-data").textContent);
  var details = document.getElementById("details");
  var body = details.querySelector(".body");
  var byKey = {};
  var rows = Array.prototype.slice.call(document.querySelectorAll(".row"));
  rows.forEach(function (row) { byKey[row.dataset.key] = row; });

  // Collapse and expand: a row's descendants are the rows after it that are deeper.
  function descendants(row) {
    var out = [];
    var depth = +row.dataset.depth;
    for (var n = row.nextElementSibling; n; n = n.nextElementSibling) {
      if (!n.classList.contains("row")) break;
      if (+n.dataset.depth <= depth) break;
      out.push(n);
    }
    return out;
  }
  function setCollapsed(row, collapsed, later) {
    row.classList.toggle("collapsed", collapsed);
    var skipBelow = -1;
    descendants(row).forEach(function (n) {
      var d = +n.dataset.depth;
      if (collapsed) { n.classList.add("hidden"); return; }
      if (skipBelow >= 0 && d > skipBelow) { n.classList.add("hidden"); return; }
      skipBelow = -1;
      n.classList.remove("hidden");
      if (n.classList.contains("collapsed")) skipBelow = d;
    });
    if (!later) drawLinks();
  }

  function esc(s) {
    return String(s).replace(/[&<>"']/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c];
    });
  }
  function table(obj) {
    var keys = Object.keys(obj || {});
    if (!keys.length) return "<p>none</p>";
    return "<table>" + keys.map(function (k) {
      var v = obj[k];
      return "<tr><td>" + esc(k) + "</td><td>" + esc(typeof v === "string" ? v : JSON.stringify(v)) + "</td></tr>";
    }).join("") + "</table>";
  }
  function show(row) {
    rows.forEach(function (r) { r.classList.remove("sel"); });
    row.classList.add("sel");
    var s = data[+row.dataset.k];
    var facts = {
      "span id": s.span_id, "trace id": s.trace_id, "parent span id": s.parent_span_id || "-",
      "kind": s.kind || "-", "status": s.status, "start": s.start || "?",
      "duration": s.duration_ms == null ? "?" : s.duration_ms + " ms",
      "self time": s.self_time_ms + " ms",
      "queue time": s.queue_time_ms == null ? "-" : s.queue_time_ms + " ms",
      "on the critical path": s.on_critical_path ? "yes" : "no"
    };
    if (s.attempt != null) facts["delivery attempt"] = s.attempt;
    if (s.error) facts.error = s.error;
    var links = (s.links || []).map(function (l) {
      var key = l.trace_id + "/" + l.span_id;
      var what = l.in_input ? "<a data-go=\"" + esc(key) + "\">" + esc(l.target) + "</a>" : "not in the input";
      return "<tr><td><code>" + esc(key) + "</code></td><td>" + what +
        (Object.keys(l.attributes || {}).length ? "<br>" + esc(JSON.stringify(l.attributes)) : "") + "</td></tr>";
    }).join("");
    var events = (s.events || []).map(function (e) {
      return "<tr><td>" + esc(e.name || "event") + "</td><td>" + esc(JSON.stringify(e)) + "</td></tr>";
    }).join("");
    body.innerHTML = "<h3>" + esc(s.service || "<no service>") + " " + esc(s.operation || "<no operation>") + "</h3>" +
      table(facts) + "<h4>attributes</h4>" + table(s.attributes) +
      "<h4>events</h4>" + (events ? "<table>" + events + "</table>" : "<p>none</p>") +
      "<h4>links</h4>" + (links ? "<table>" + links + "</table>" : "<p>none</p>");
    details.hidden = false;
  }
  document.addEventListener("click", function (ev) {
    var go = ev.target.closest("[data-go]");
    if (go) {
      var target = byKey[go.dataset.go];
      if (target) { target.classList.remove("hidden"); target.scrollIntoView({ block: "center" }); show(target); }
      return;
    }
    var tog = ev.target.closest("button.tog");
    if (tog) {
      var r = tog.closest(".row");
      setCollapsed(r, !r.classList.contains("collapsed"));
      ev.stopPropagation();
      return;
    }
    var row = ev.target.closest(".row");
    if (row) show(row);
  });
  details.querySelector(".close").addEventListener("click", function () { details.hidden = true; });

  // Links: a dashed arrow from the linked span's bar to the linking span's bar, within
  // one run (a linked consumer trace is drawn with its producer).
  function drawLinks() {
    Array.prototype.forEach.call(document.querySelectorAll(".waterfall"), function (wf) {
      var svg = wf.querySelector("svg.links");
      var box = wf.getBoundingClientRect();
      var parts = [];
      Array.prototype.forEach.call(wf.querySelectorAll(".row[data-links]"), function (row) {
        if (row.classList.contains("hidden")) return;
        row.dataset.links.split(" ").forEach(function (key) {
          var target = byKey[key];
          if (!target || target.classList.contains("hidden") || !wf.contains(target)) return;
          var a = target.querySelector(".seg.bar"), b = row.querySelector(".seg.bar");
          if (!a || !b) return;
          var ra = a.getBoundingClientRect(), rb = b.getBoundingClientRect();
          var x1 = ra.right - box.left, y1 = ra.top + ra.height / 2 - box.top;
          var x2 = rb.left - box.left, y2 = rb.top + rb.height / 2 - box.top;
          var mid = (x1 + x2) / 2;
          parts.push("<path d=\"M" + x1 + "," + y1 + " C" + mid + "," + y1 + " " + mid + "," + y2 + " " + x2 + "," + y2 + "\"/>" +
            "<circle cx=\"" + x2 + "\" cy=\"" + y2 + "\" r=\"2.5\"/>");
        });
      });
      svg.innerHTML = parts.join("");
    });
  }
  // Very large pages start with subtrees below depth 2 collapsed, so they stay quick.
  if (rows.length > 5000) {
    rows.forEach(function (r) {
      if (+r.dataset.depth === 2 && r.querySelector("button.tog")) setCollapsed(r, true, true);
    });
  }
  window.addEventListener("resize", drawLinks);
  drawLinks();
})();
