// Canned replies without a page load: "Insert" fetches the reply rendered for this work
// order (GET /api/v1/work-orders/N/canned-replies/ID) and puts it where the cursor was in
// the reply box, or after what is there, as the server does without this script (the
// button then posts the form and the page comes back with the text added).
(function () {
  "use strict";
  var form = document.querySelector("form.reply[data-number]");
  if (!form) { return; }
  var button = form.querySelector("button.insert-canned");
  var pick = form.querySelector("select[name=canned]");
  var box = form.querySelector("textarea[name=body]");
  var status = form.querySelector(".canned-status");
  if (!button || !pick || !box) { return; }

  var cursor = null; // [start, end] when the box last had the focus
  box.addEventListener("blur", function () { cursor = [box.selectionStart, box.selectionEnd]; });

  function say(text) { if (status) { status.textContent = text; } }

  function insert(text) {
    var value = box.value, at;
    if (cursor && cursor[1] < value.replace(/\s+$/, "").length) {
      box.value = value.slice(0, cursor[0]) + text + value.slice(cursor[1]);
      at = cursor[0] + text.length;
    } else {
      box.value = value.trim() ? value.replace(/\s+$/, "") + "\n\n" + text : text;
      at = box.value.length;
    }
    box.focus();
    box.setSelectionRange(at, at);
    cursor = [at, at];
  }

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
      .then(function (body) { insert(body.text); say("Inserted."); })
      .catch(function (err) { say("Could not insert: " + err.message); })
      .then(function () { button.disabled = false; });
  });
}());
