// Canned replies without a page load: "Insert" fetches the reply rendered for this work
// order (GET /api/v1/work-orders/N/canned-replies/ID) and puts it at the cursor. Without
// this script the button posts the form and the server answers the page with the text added.
(function () {
  "use strict";
  var form = document.querySelector("form.reply[data-number]");
  if (!form) { return; }
  var button = form.querySelector("button.insert-canned");
  var pick = form.querySelector("select[name=canned]");
  var box = form.querySelector("textarea[name=body]");
  var status = form.querySelector(".canned-status");
  if (!button || !pick || !box) { return; }

  function say(text) { if (status) { status.textContent = text; } }

  function insert(text) {
    var start = box.selectionStart, end = box.selectionEnd, value = box.value;
    if (typeof start !== "number" || document.activeElement !== box && value.trim()) {
      // Not placed by the user: after what is there, as the server does.
      box.value = value.trim() ? value.replace(/\s+$/, "") + "\n\n" + text : text;
      start = end = box.value.length;
      box.setSelectionRange(start, end);
    } else {
      box.value = value.slice(0, start) + text + value.slice(end);
      box.setSelectionRange(start + text.length, start + text.length);
    }
    box.dispatchEvent(new Event("input", { bubbles: true }));
    box.focus();
  }

  var lastCursor = null;
  box.addEventListener("blur", function () {
    lastCursor = [box.selectionStart, box.selectionEnd];
  });

  button.addEventListener("click", function (event) {
    event.preventDefault();
    var url = "/api/v1/work-orders/" + encodeURIComponent(form.dataset.number) +
      "/canned-replies/" + encodeURIComponent(pick.value);
    button.disabled = true;
    say("Inserting…");
    fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (r) {
        return r.json().then(function (body) {
          if (!r.ok) { throw new Error(body && body.detail ? String(body.detail) : "HTTP " + r.status); }
          return body;
        });
      })
      .then(function (body) {
        if (lastCursor && box.value.trim()) {
          box.focus();
          box.setSelectionRange(lastCursor[0], lastCursor[1]);
        }
        insert(body.text);
        say("Inserted.");
      })
      .catch(function (err) { say("Could not insert: " + err.message); })
      .then(function () { button.disabled = false; });
  });
}());
