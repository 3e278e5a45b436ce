// The portal's one script: the Copy button next to a key shown once. Without JavaScript the
// button stays hidden and the key can be selected by hand.
document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("button[data-copy]").forEach(function (button) {
    button.hidden = false;
    button.addEventListener("click", function () {
      var text = document.getElementById(button.dataset.copy).textContent;
      var done = function () { button.textContent = "Copied"; };
      var fallback = function () {
        select(button.dataset.copy);
        if (document.execCommand("copy")) { done(); }
      };
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(text).then(done, fallback);
      } else {
        fallback();
      }
    });
  });
  function select(id) {
    var range = document.createRange();
    range.selectNodeContents(document.getElementById(id));
    var selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
  }
});
