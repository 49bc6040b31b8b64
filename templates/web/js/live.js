// The live queue and presence (triage.desk.live argues for polling over server-sent events).
// Queue page: every POLL_MS ask /api/v1/changes what changed since the last cursor; when a
// work order is new or at a version this page has not seen, fetch the same queue URL again
// and swap in its counts, summary, rows and pager (rendered and escaped by the server).
// Work-order page: a heartbeat every BEAT_MS (viewing, or replying while a reply is typed)
// that answers who else is here and the work order's version now.
// Without this script both pages work as before: reload to see changes.
(function () {
  "use strict";
  var POLL_MS = 10000;          // the queue's poll
  var FULL_MS = 5 * 60 * 1000;  // counts that change by time alone (a clock passing at-risk)
  var BEAT_MS = 20000;          // triage.desk.live.HEARTBEAT
  var TYPING_MS = 30000;        // "replying" this long after the last keystroke

  function csrfToken() {
    var input = document.querySelector("input[name=csrf_token]");
    return input ? input.value : "";
  }

  function getJSON(url) {
    return fetch(url, {credentials: "same-origin", headers: {"Accept": "application/json"}})
      .then(function (r) { return r.ok ? r.json() : null; });
  }

  // ---- the queue ------------------------------------------------------------------------
  function liveQueue(table) {
    var cursor = null;
    var seen = new Map();  // number -> version this page knows
    var lastFull = Date.now();
    var busy = false;
    var status = document.createElement("p");
    status.className = "live-status";
    status.id = "live-status";
    status.setAttribute("role", "status");
    status.setAttribute("aria-live", "polite");
    table.parentNode.insertBefore(status, table);

    function remember(root) {
      root.querySelectorAll("tr[data-number]").forEach(function (tr) {
        seen.set(tr.dataset.number, Number(tr.dataset.version));
      });
    }
    remember(table);

    function swap(doc, fresh) {
      var known = new Set();
      table.querySelectorAll("tr[data-number]").forEach(function (tr) {
        known.add(tr.dataset.number);
      });
      // What the technician ticked (bulk selection) survives the swap.
      var ticked = new Set();
      table.querySelectorAll("tr[data-number] input[type=checkbox]:checked").forEach(function (i) {
        ticked.add(i.closest("tr").dataset.number + "\u0000" + i.name + "\u0000" + i.value);
      });
      ["section.counts", "p.summary", "nav.pager"].forEach(function (sel) {
        var now = document.querySelector("main " + sel), next = doc.querySelector("main " + sel);
        if (now && next) { now.replaceWith(document.importNode(next, true)); }
        else if (now) { now.remove(); }
        else if (next && sel === "nav.pager") { table.after(document.importNode(next, true)); }
      });
      var body = doc.querySelector("table.queue tbody");
      if (!body) { return {added: 0, changed: 0}; }
      var newBody = document.importNode(body, true);
      var added = 0, changed = 0;
      newBody.querySelectorAll("tr[data-number]").forEach(function (tr) {
        var n = tr.dataset.number;
        if (!known.has(n)) { tr.classList.add("live-new"); added++; }
        else if (fresh.has(n)) { tr.classList.add("live-changed"); changed++; }
        tr.querySelectorAll("input[type=checkbox]").forEach(function (i) {
          if (ticked.has(n + "\u0000" + i.name + "\u0000" + i.value)) { i.checked = true; }
        });
      });
      table.tBodies[0].replaceWith(newBody);
      remember(table);
      return {added: added, changed: changed};
    }

    function refresh(fresh) {
      return fetch(window.location.href, {credentials: "same-origin"})
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (html) {
          if (html === null) { return; }
          var doc = new DOMParser().parseFromString(html, "text/html");
          var got = swap(doc, fresh);
          lastFull = Date.now();
          if (got.added || got.changed) {
            var parts = [];
            if (got.added) { parts.push(got.added + " new"); }
            if (got.changed) { parts.push(got.changed + " changed"); }
            status.textContent = "Updated " + new Date().toLocaleTimeString() + ": " +
              parts.join(", ") + ".";
          }
        });
    }

    function poll() {
      if (busy || document.hidden) { return; }
      busy = true;
      var url = "/api/v1/changes" + (cursor ? "?since=" + encodeURIComponent(cursor) : "");
      getJSON(url).then(function (data) {
        if (data === null) { status.textContent = "Live updates paused (reload the page)."; return; }
        var first = cursor === null;
        cursor = data.cursor || cursor;
        var fresh = new Set();
        data.work_orders.forEach(function (w) {
          if (seen.get(w.number) !== w.version) { fresh.add(w.number); }
        });
        // Changes outside this view are remembered, so they cost one refresh, not one a poll.
        data.work_orders.forEach(function (w) { seen.set(w.number, w.version); });
        if (!first && (fresh.size || data.more || Date.now() - lastFull > FULL_MS)) {
          return refresh(fresh);
        }
      }).catch(function () {
        status.textContent = "Live updates interrupted; retrying.";
      }).then(function () { busy = false; });
    }

    poll();
    window.setInterval(poll, POLL_MS);
    document.addEventListener("visibilitychange", function () { if (!document.hidden) { poll(); } });
  }

  // ---- presence on a work order ---------------------------------------------------------
  function presence(box) {
    var number = box.dataset.number;
    var version = Number(box.dataset.version);
    var url = "/api/v1/work-orders/" + encodeURIComponent(number) + "/presence";
    var state = "viewing";
    var typedAt = 0;

    function show(data) {
      box.textContent = "";
      if (data.others.length) {
        box.appendChild(document.createTextNode("Also here: "));
        data.others.forEach(function (p, i) {
          var span = document.createElement("span");
          span.className = "who-here " + (p.state === "replying" ? "replying" : "viewing");
          var name = document.createElement("bdi");
          name.textContent = p.display_name;
          span.appendChild(name);
          span.appendChild(document.createTextNode(p.state === "replying" ? " (replying)" : " (viewing)"));
          box.appendChild(span);
          if (i < data.others.length - 1) { box.appendChild(document.createTextNode(", ")); }
        });
      }
      if (data.version > version) {
        var stale = document.createElement("span");
        stale.className = "stale";
        stale.appendChild(document.createTextNode("This work order has changed since this page was loaded: "));
        var a = document.createElement("a");
        a.href = window.location.pathname;
        a.textContent = "reload to see the changes";
        stale.appendChild(a);
        stale.appendChild(document.createTextNode(" (what you type is sent only if nothing changed)."));
        box.appendChild(stale);
      }
    }

    function beat(next, keepalive) {
      state = next;
      return fetch(url, {
        method: "POST", credentials: "same-origin", keepalive: !!keepalive,
        headers: {"Content-Type": "application/json", "Accept": "application/json",
                  "X-CSRF-Token": csrfToken()},
        body: JSON.stringify({state: next})
      }).then(function (r) { return r.ok ? r.json() : null; })
        .then(function (data) { if (data) { show(data); } })
        .catch(function () { /* the next beat tries again */ });
    }

    var reply = document.getElementById("reply-body");
    if (reply) {
      reply.addEventListener("input", function () {
        typedAt = Date.now();
        if (state !== "replying" && reply.value.trim()) { beat("replying"); }
      });
    }
    window.setInterval(function () {
      var typing = typedAt && Date.now() - typedAt < TYPING_MS && reply && reply.value.trim();
      beat(typing ? "replying" : "viewing");
    }, BEAT_MS);
    // Leaving says so at once; a form posted from this page comes back to it, so it does not
    // (a late "left" would hide this technician until the next beat).
    var posting = false;
    document.addEventListener("submit", function () { posting = true; });
    window.addEventListener("pagehide", function () { if (!posting) { beat("left", true); } });
    beat("viewing");
  }

  var table = document.querySelector("table.queue");
  if (table) { liveQueue(table); }
  var box = document.getElementById("presence");
  if (box) { presence(box); }
})();
