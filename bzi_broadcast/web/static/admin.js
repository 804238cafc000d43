// Progressive enhancement for the staff workspace; every page works without it.
//
// The announcement editor: while one types, the preview beside the form follows. 400 ms after
// the last input the form (without the image file: that is uploaded with the next button press)
// goes to the preview endpoint, CSRF token included, and the answer replaces the preview. An
// answer to an older request never replaces a newer one.
(function () {
  "use strict";

  var DELAY_MS = 400;

  function livePreview(form) {
    var target = document.getElementById("vorschau");
    var status = document.getElementById("vorschau-status");
    var url = form.getAttribute("data-preview");
    if (!target || !url || !window.fetch || !window.FormData) {
      return;
    }
    var timer = null;
    var latest = 0;

    function say(text) {
      if (status) {
        status.textContent = text;
      }
    }

    function refresh() {
      var number = ++latest;
      var data = new FormData(form);
      data.delete("image-file");
      data.delete("action");
      target.setAttribute("aria-busy", "true");
      fetch(url, {
        method: "POST",
        body: data,
        credentials: "same-origin",
        headers: { "X-Requested-With": "fetch" }
      })
        .then(function (answer) {
          if (!answer.ok || answer.redirected) {
            // redirected: the session ended and the login page answered instead
            throw new Error(String(answer.status));
          }
          return answer.text();
        })
        .then(function (html) {
          if (number !== latest) {
            return;
          }
          target.innerHTML = html;
          target.removeAttribute("aria-busy");
          say("");
        })
        .catch(function () {
          if (number !== latest) {
            return;
          }
          target.removeAttribute("aria-busy");
          say(form.getAttribute("data-failed") || "");
        });
    }

    function schedule(event) {
      if (event.target && event.target.type === "file") {
        return;
      }
      window.clearTimeout(timer);
      timer = window.setTimeout(refresh, DELAY_MS);
    }

    form.addEventListener("input", schedule);
    form.addEventListener("change", schedule);
  }

  document.addEventListener("DOMContentLoaded", function () {
    var form = document.getElementById("editor");
    if (form) {
      livePreview(form);
    }
  });
})();
