// The queue's bulk form without script is a checkbox per row; this adds "select all" to the
// header and a count of the selected rows beside the actions.
(function () {
  "use strict";
  const form = document.getElementById("bulk");
  if (!form) return;
  const head = form.querySelector("th.col-number");
  const legend = form.querySelector("fieldset.bulk-actions legend");
  const boxes = () => Array.from(form.querySelectorAll("tbody input[type=checkbox][name=wo]"));
  if (!head || boxes().length === 0) return;
  const all = document.createElement("input");
  all.type = "checkbox";
  all.className = "select-all";
  all.setAttribute("aria-label", "Select all rows on this page");
  head.prepend(all, " ");
  const count = document.createElement("span");
  count.className = "selected-count";
  if (legend) legend.append(" ", count);

  function update() {
    const b = boxes();
    const n = b.filter((x) => x.checked).length;
    all.checked = n === b.length;
    all.indeterminate = n > 0 && n < b.length;
    count.textContent = "(" + n + " selected)";
  }
  all.addEventListener("change", () => {
    boxes().forEach((x) => { x.checked = all.checked; });
    update();
  });
  form.addEventListener("change", (e) => {
    if (e.target !== all) update();
  });
  update();
})();
