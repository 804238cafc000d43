// /demo: reload the page as soon as the local servers received something new.
// The page is complete without this script (a slower meta refresh in <noscript> does the same).
(function () {
  "use strict";
  var marked = document.querySelector("[data-stand]");
  if (!marked || !window.fetch) {
    return;
  }
  var stand = marked.getAttribute("data-stand");
  function check() {
    fetch("/demo/stand", { cache: "no-store", credentials: "same-origin" })
      .then(function (answer) { return answer.ok ? answer.json() : null; })
      .then(function (data) {
        if (data && data.stand !== stand) {
          window.location.reload();
        }
      })
      .catch(function () { /* the demo was stopped: keep showing what arrived */ });
  }
  window.setInterval(check, 2000);
})();
