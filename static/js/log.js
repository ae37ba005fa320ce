// A log page follows the end of its log, as `tail -f` does. When the reader scrolls up to read, the refreshes
// wait (the page's hx-trigger asks window.logFollowing), so the text does not move under them; scrolling back
// down to the end follows again.
(function () {
  window.logFollowing = true;

  function atEnd(pre) {
    return pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 8;
  }

  function follow(pre) {
    if (pre && window.logFollowing) pre.scrollTop = pre.scrollHeight;
  }

  document.addEventListener(
    "scroll",
    function (event) {
      if (event.target instanceof HTMLElement && event.target.matches("pre.log")) {
        window.logFollowing = atEnd(event.target);
      }
    },
    true, // scroll events do not bubble
  );
  document.addEventListener("htmx:afterSwap", function (event) {
    if (event.target instanceof HTMLElement && event.target.matches("pre.log")) follow(event.target);
  });
  document.addEventListener("DOMContentLoaded", function () {
    follow(document.querySelector("pre.log"));
  });
})();
