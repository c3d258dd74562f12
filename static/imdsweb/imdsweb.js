// Small progressive enhancements; every page works without them.
(function () {
  "use strict";
  // "Select all" header checkboxes: data-select-all="<input name>" toggles that page's boxes.
  document.addEventListener("change", function (event) {
    var box = event.target;
    if (!box.matches || !box.matches("input[data-select-all]")) return;
    var form = box.closest("form") || document;
    form.querySelectorAll('input[type=checkbox][name="' + box.dataset.selectAll + '"]').forEach(function (other) {
      if (!other.disabled) other.checked = box.checked;
    });
  });
  // A bulk button with data-needs-selection="<name>" refuses to submit an empty selection.
  document.addEventListener("click", function (event) {
    var button = event.target.closest && event.target.closest("button[data-needs-selection]");
    if (!button) return;
    var form = button.closest("form");
    if (form && !form.querySelector('input[name="' + button.dataset.needsSelection + '"]:checked')) {
      event.preventDefault();
      window.alert("Select at least one row first.");
    }
  });
})();
