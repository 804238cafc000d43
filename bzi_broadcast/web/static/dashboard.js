// The delivery dashboard, live: while an announcement is sending, refresh each channel's bar and
// figures from versand.json every two seconds. Without this script the page shows the figures
// as they were when it loaded (and a reload shows the current ones).
(function () {
  "use strict";
  var root = document.getElementById("versand");
  if (!root || root.getAttribute("data-live") !== "true" || !window.fetch) {
    return;
  }
  var source = root.getAttribute("data-source");
  var states = ["sent", "failed", "cancelled", "sending", "queued"];

  function setText(scope, field, text) {
    var node = scope.querySelector('[data-field="' + field + '"]');
    if (node) {
      node.textContent = text;
    }
  }

  function showChannel(figures) {
    var card = document.querySelector('[data-channel="' + figures.channel + '"]');
    if (!card) {
      return false; // a channel that got its first rows after the page loaded
    }
    states.forEach(function (state) {
      setText(card, state, String(figures[state]));
      var share = card.querySelector('[data-share="' + state + '"]');
      if (share) {
        share.style.width = figures.shares[state] + "%";
      }
    });
    setText(card, "total", String(figures.total));
    setText(card, "summary", figures.summary);
    setText(card, "per_minute", String(figures.per_minute));
    setText(card, "eta", figures.eta ? " · " + figures.eta : "");
    var bar = card.querySelector('[data-field="progress"]');
    if (bar) {
      bar.max = figures.total || 1;
      bar.value = figures.done;
    }
    return true;
  }

  function refresh() {
    fetch(source, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (answer) {
        if (!answer.ok) {
          throw new Error(String(answer.status));
        }
        return answer.json();
      })
      .then(function (data) {
        setText(document, "status_label", data.status_label);
        var complete = data.channels.every(showChannel);
        if (!data.live || !complete) {
          // finished (failures, chart, thread links are drawn on the server) or new channels
          window.location.reload();
          return;
        }
        window.setTimeout(refresh, 2000);
      })
      .catch(function () {
        window.setTimeout(refresh, 10000); // logged out or offline: try again, less often
      });
  }

  window.setTimeout(refresh, 2000);
})();
